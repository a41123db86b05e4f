//! The accounting of a training benchmark (`train --benchmark`, `model-step`, docs/gpu.md): the
//! FLOPs of one trained token (the one formula kormo and the PyTorch reference share), the
//! dense bf16 peak of a device, and MFU from the two.
//!
//! FLOPs per trained token (forward + backward) follow the usual accounting (PaLM, appendix B):
//! `6 N` for the matmuls, N = the parameters used in matmuls (every projection and the LM head;
//! the embedding table only when tied, since a lookup is not a matmul), plus causal attention's
//! score and value products: forward `2 * 2 * seq * head_dim` per head and layer for the full
//! square, halved for the causal triangle, times 3 for forward + backward, so
//! `6 * layers * heads * head_dim * seq`. The document mask's extra skipped tiles are not
//! subtracted: MFU is stated against the causal-model budget.

use kormo_model::{params, ModelConfig, ParamKind};

/// The parameters used in matmuls: every projection and the LM head (the embedding table only
/// when tied, as the head).
pub fn matmul_params(config: &ModelConfig) -> usize {
    params::layout(config)
        .iter()
        .filter(|p| p.kind == ParamKind::Linear || (p.kind == ParamKind::Embedding && config.tie_embeddings))
        .map(|p| p.numel())
        .sum()
}

/// Forward + backward FLOPs of one trained token at sequence length `seq_len`.
pub fn training_flops_per_token(config: &ModelConfig, seq_len: usize) -> f64 {
    let attention = 6.0 * (config.layers * config.heads * config.head_dim) as f64 * seq_len as f64;
    6.0 * matmul_params(config) as f64 + attention
}

/// Dense bf16 tensor-core peak (FLOP/s, no sparsity) of the data-centre GPUs kormo targets, from
/// the device name; None for others (the caller then reports throughput without MFU).
pub fn peak_bf16_flops(device_name: &str) -> Option<f64> {
    let name = device_name.to_ascii_uppercase();
    let tflops = if name.contains("H100") || name.contains("H200") || name.contains("H800") {
        if name.contains("PCIE") {
            756.0
        } else {
            989.0
        }
    } else if name.contains("A100") || name.contains("A800") {
        312.0
    } else {
        return None;
    };
    Some(tflops * 1e12)
}

/// Model FLOPs utilisation of a measured throughput.
pub fn mfu(tokens_per_second: f64, flops_per_token: f64, peak_flops: f64) -> f64 {
    tokens_per_second * flops_per_token / peak_flops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_count_every_linear_layer_and_causal_attention() {
        let config = ModelConfig::proxy_1b();
        let (h, q, kv, f, v) = (config.hidden, config.heads * config.head_dim, config.kv_heads * config.head_dim, config.ffn, config.vocab);
        // The matmuls of one token, counted from the architecture rather than the layout:
        // q, k, v, o, gate, up, down per layer, then the LM head; 2 FLOPs per multiply-add, x3.
        let per_layer = h * q + 2 * h * kv + q * h + 3 * h * f;
        assert_eq!(matmul_params(&config), config.layers * per_layer + h * v);
        let linear = (config.layers * per_layer + h * v) as f64;
        let seq = 4096;
        let attention = 6.0 * (config.layers * q) as f64 * seq as f64;
        let got = training_flops_per_token(&config, seq);
        assert!((got - (6.0 * linear + attention)).abs() < 1.0, "{got} vs {}", 6.0 * linear + attention);
        // Tying adds the shared table's head matmul only once (it is the LM head).
        let tied = ModelConfig { tie_embeddings: true, ..config.clone() };
        assert!((training_flops_per_token(&tied, seq) - got).abs() < 1.0);
    }

    #[test]
    fn peaks_and_mfu() {
        assert_eq!(peak_bf16_flops("NVIDIA H100 80GB HBM3"), Some(989e12));
        assert_eq!(peak_bf16_flops("NVIDIA H200"), Some(989e12));
        assert_eq!(peak_bf16_flops("NVIDIA H100 PCIe"), Some(756e12));
        assert_eq!(peak_bf16_flops("NVIDIA GeForce RTX 4090"), None);
        assert!((mfu(1000.0, 1e9, 4e12) - 0.25).abs() < 1e-12);
    }

}
