//! Throughput of the CPU reference: forward + backward of the `tiny` model on a packed batch,
//! in f32 with all cores. Run: `cargo bench -p kormo-cpu --bench train_step [-- batch seq steps]`.

use std::time::Instant;

use kormo_cpu::CpuOps;
use kormo_model::{Batch, Model, ModelConfig};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (batch_size, seq_len, steps) = (*args.first().unwrap_or(&8), *args.get(1).unwrap_or(&256), *args.get(2).unwrap_or(&5));
    let cfg = ModelConfig::tiny();
    let n = batch_size * seq_len;
    // Documents of 100 tokens, running positions, every token trained.
    let batch = Batch {
        tokens: (0..n).map(|i| (i * 7919 % cfg.vocab) as u32).collect(),
        targets: (0..n).map(|i| ((i + 1) * 7919 % cfg.vocab) as u32).collect(),
        loss_weights: vec![1.0; n],
        doc_ids: (0..n).map(|i| ((i % seq_len) / 100) as u32).collect(),
        positions: (0..n).map(|i| (i % seq_len) as u32).collect(),
        batch_size,
        seq_len,
    };
    let ops = CpuOps::<f32>::new();
    let threads = ops.threads();
    let mut model = Model::new(cfg.clone(), ops, 0).expect("tiny config is valid");
    let scale = (1.0 / batch.loss_weight_sum()) as f32;
    model.forward_backward(&batch, scale).expect("valid batch"); // warm-up allocates the workspace
    let start = Instant::now();
    for _ in 0..steps {
        model.zero_grads();
        model.forward_backward(&batch, scale).expect("valid batch");
    }
    let seconds = start.elapsed().as_secs_f64() / steps as f64;
    println!(
        "tiny ({} params), batch {batch_size} x {seq_len}, {threads} threads: {:.1} ms/step, {:.0} tokens/s",
        cfg.param_count(),
        seconds * 1e3,
        n as f64 / seconds
    );
}
