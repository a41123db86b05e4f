//! Incremental decoding with a key/value cache on the CPU backend.
//!
//! The training [`kormo_model::Model`] recomputes the whole sequence on every call; generation
//! instead keeps each layer's RoPE-rotated keys and values of all tokens seen so far and
//! processes only new tokens: a prompt in one chunk (prefill), then one token per step. The
//! layer math is the model's (same `Ops` calls on `CpuOps<f32>`: RMSNorm, projections, RoPE at
//! the tokens' absolute positions, SwiGLU); only attention differs, because queries of the new
//! tokens attend to cached keys: query at position p sees keys 0..=p of its sequence (one
//! document, so causal is the whole mask). `tests/kv_cache.rs` checks the logits against the
//! full forward pass of `Model`.

use kormo_cpu::float::{axpy, dot};
use kormo_cpu::{parallel, CpuOps};
use kormo_hf::Weights;
use kormo_model::params::{self, LayerSlot};
use kormo_model::{EmbeddingShape, MatmulShape, ModelConfig, Ops, RopeShape, RowsShape};

/// Keys and values of one layer for every cached position: `[len, kv_heads * head_dim]`.
#[derive(Default)]
struct LayerCache {
    keys: Vec<f32>,
    values: Vec<f32>,
}

/// A model ready for generation, with its KV cache.
pub struct Decoder {
    config: ModelConfig,
    ops: CpuOps<f32>,
    /// Parameters in `params::layout` order.
    params: Vec<Vec<f32>>,
    cache: Vec<LayerCache>,
    /// Tokens in the cache (= position of the next token).
    len: usize,
}

impl Decoder {
    pub fn new(weights: &Weights, threads: usize) -> Decoder {
        let ops = CpuOps::<f32>::with_threads(threads);
        let params = weights.tensors.iter().map(|t| t.values.clone()).collect();
        let cache = (0..weights.config.layers).map(|_| LayerCache::default()).collect();
        Decoder { config: weights.config.clone(), ops, params, cache, len: 0 }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Tokens processed so far (the position the next token gets).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every cached token (start a new sequence).
    pub fn reset(&mut self) {
        self.cache.iter_mut().for_each(|c| {
            c.keys.clear();
            c.values.clear();
        });
        self.len = 0;
    }

    /// Forgets the cached tokens from position `len` on (keeps a shared prefix, e.g. the
    /// context of a multiple-choice question scored once for all its choices).
    pub fn truncate(&mut self, len: usize) {
        let kv = self.config.kv_dim();
        if len < self.len {
            self.cache.iter_mut().for_each(|c| {
                c.keys.truncate(len * kv);
                c.values.truncate(len * kv);
            });
            self.len = len;
        }
    }

    /// Appends `tokens` (each `< vocab`) and returns the logits after the last one (`[vocab]`).
    pub fn extend(&mut self, tokens: &[u32]) -> Vec<f32> {
        let all = self.run(tokens, false);
        all[all.len() - self.config.vocab..].to_vec()
    }

    /// Appends `tokens` and returns the logits after each of them (`[tokens.len(), vocab]`).
    pub fn extend_all(&mut self, tokens: &[u32]) -> Vec<f32> {
        self.run(tokens, true)
    }

    fn run(&mut self, tokens: &[u32], all_logits: bool) -> Vec<f32> {
        let cfg = &self.config;
        assert!(!tokens.is_empty(), "extend needs at least one token");
        assert!(tokens.iter().all(|&t| (t as usize) < cfg.vocab), "token id outside the vocabulary");
        let ops = &self.ops;
        let p = &self.params;
        let t = tokens.len();
        let (h, q_dim, kv_dim, f) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
        let rows = RowsShape { rows: t, dim: h };
        let positions: Vec<u32> = (self.len..self.len + t).map(|i| i as u32).collect();
        let mut x = vec![0.0; t * h];
        ops.embedding_fwd(&p[params::EMBED_INDEX], &tokens.to_vec(), &mut x, EmbeddingShape { tokens: t, vocab: cfg.vocab, dim: h });
        let mut normed = vec![0.0; t * h];
        let mut inv_rms = vec![0.0; t];
        let (mut q, mut k, mut v) = (vec![0.0; t * q_dim], vec![0.0; t * kv_dim], vec![0.0; t * kv_dim]);
        let mut attn = vec![0.0; t * q_dim];
        let (mut gate, mut up, mut act) = (vec![0.0; t * f], vec![0.0; t * f], vec![0.0; t * f]);
        let add = |mut s: MatmulShape| {
            s.accumulate = true;
            s
        };
        for (layer, cache) in self.cache.iter_mut().enumerate() {
            let w = |slot| &p[params::layer_index(layer, slot)];
            // Pre-LN: x + Attn(Norm(x)); post-LN layers (MixLN's first, every DeepNorm layer):
            // Norm(α x + Attn(x)), α = cfg.residual_scale().
            let post_ln = layer < cfg.post_ln_layers();
            let alpha = if post_ln { cfg.residual_scale() } else { 1.0 };
            if !post_ln {
                ops.rmsnorm_fwd(&x, w(LayerSlot::AttnNorm), &mut normed, &mut inv_rms, rows, cfg.rms_eps);
            }
            let input = if post_ln { &x } else { &normed };
            ops.matmul(input, w(LayerSlot::Q), &mut q, MatmulShape::linear_fwd(t, h, q_dim));
            ops.matmul(input, w(LayerSlot::K), &mut k, MatmulShape::linear_fwd(t, h, kv_dim));
            ops.matmul(input, w(LayerSlot::V), &mut v, MatmulShape::linear_fwd(t, h, kv_dim));
            ops.rope_fwd(&mut q, &positions, RopeShape { tokens: t, heads: cfg.heads, head_dim: cfg.head_dim }, cfg.rope_theta);
            ops.rope_fwd(&mut k, &positions, RopeShape { tokens: t, heads: cfg.kv_heads, head_dim: cfg.head_dim }, cfg.rope_theta);
            cache.keys.extend_from_slice(&k);
            cache.values.extend_from_slice(&v);
            cached_attention(ops.threads(), cfg, &q, cache, self.len, &mut attn);
            if alpha != 1.0 {
                ops.scale(&mut x, alpha);
            }
            ops.matmul(&attn, w(LayerSlot::O), &mut x, add(MatmulShape::linear_fwd(t, q_dim, h)));
            if post_ln {
                let sum = x.clone();
                ops.rmsnorm_fwd(&sum, w(LayerSlot::AttnNorm), &mut x, &mut inv_rms, rows, cfg.rms_eps);
            } else {
                ops.rmsnorm_fwd(&x, w(LayerSlot::MlpNorm), &mut normed, &mut inv_rms, rows, cfg.rms_eps);
            }
            let input = if post_ln { &x } else { &normed };
            ops.matmul(input, w(LayerSlot::Gate), &mut gate, MatmulShape::linear_fwd(t, h, f));
            ops.matmul(input, w(LayerSlot::Up), &mut up, MatmulShape::linear_fwd(t, h, f));
            ops.swiglu_fwd(&gate, &up, &mut act, t * f);
            if alpha != 1.0 {
                ops.scale(&mut x, alpha);
            }
            ops.matmul(&act, w(LayerSlot::Down), &mut x, add(MatmulShape::linear_fwd(t, f, h)));
            if post_ln {
                let sum = x.clone();
                ops.rmsnorm_fwd(&sum, w(LayerSlot::MlpNorm), &mut x, &mut inv_rms, rows, cfg.rms_eps);
            }
        }
        self.len += t;
        // Only the rows whose logits are wanted go through the final norm and the head.
        let first = if all_logits { 0 } else { t - 1 };
        let n = t - first;
        let last = x[first * h..].to_vec();
        let mut normed = vec![0.0; n * h];
        let mut inv_rms = vec![0.0; n];
        ops.rmsnorm_fwd(&last, &p[params::final_norm_index(cfg)], &mut normed, &mut inv_rms, RowsShape { rows: n, dim: h }, cfg.rms_eps);
        let mut logits = vec![0.0; n * cfg.vocab];
        ops.matmul(&normed, &p[params::head_index(cfg)], &mut logits, MatmulShape::linear_fwd(n, h, cfg.vocab));
        logits
    }
}

/// Queries `q` (`[t, heads * head_dim]`, positions `start..start + t`) against the cache, which
/// already holds their own keys: query i sees cached positions `0..=start + i`.
fn cached_attention(threads: usize, cfg: &ModelConfig, q: &[f32], cache: &LayerCache, start: usize, out: &mut [f32]) {
    let (hd, kv_dim, q_dim) = (cfg.head_dim, cfg.kv_dim(), cfg.q_dim());
    let group = cfg.heads / cfg.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let items = out.chunks_mut(q_dim).enumerate();
    let workers = parallel::threads_for(threads, (start + q.len() / q_dim) * kv_dim * q.len() / q_dim);
    parallel::for_each(workers, items, |(i, out)| {
        let visible = start + i + 1;
        let mut scores = vec![0.0f32; visible];
        for head in 0..cfg.heads {
            let kv_off = (head / group) * hd;
            let query = &q[i * q_dim + head * hd..][..hd];
            for (j, s) in scores.iter_mut().enumerate() {
                *s = dot(query, &cache.keys[j * kv_dim + kv_off..][..hd]) * scale;
            }
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let o = &mut out[head * hd..][..hd];
            o.fill(0.0);
            let mut sum = 0.0;
            for (j, &s) in scores.iter().enumerate() {
                let weight = (s - max).exp();
                sum += weight;
                axpy(weight, &cache.values[j * kv_dim + kv_off..][..hd], o);
            }
            o.iter_mut().for_each(|x| *x /= sum);
        }
    });
}
