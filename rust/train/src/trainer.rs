//! One stage of a recipe, top to bottom: the prelude — lock the run directory, open every
//! phase's data, build the model, pick the start (resume, init checkpoint, or scratch), open
//! the metrics file — then the engine for the world size (kormo_dist::SingleRank at 1, the
//! FSDP ranks of ranks.rs otherwise) and the one step loop (step_loop.rs), which trains the
//! phases, logs, evaluates and checkpoints, ending with RUN_DIR/STAGE/final, which the next
//! stage starts from.
//!
//! Determinism: the model init, the data order and every update depend only on the recipe, the
//! seed and the step, and a checkpoint holds all of the state (weights, AdamW moments and step
//! count, data cursor, phase/step counters), so stopping and resuming gives bit-identical
//! weights and losses to an uninterrupted run (tests/resume.rs).

use crate::backend::{BackendChoice, Cpu, MemoryEstimate, Selected, TrainBackend};
use crate::lock::RunLock;
use crate::metrics::{human_count, EventRecord, MetricsFile};
use crate::phase_data::open_phase_data;
use crate::progress::{log_event, Start};
pub(crate) use crate::progress::say;
use crate::recipe::{config_flag, Recipe, StageConfig};
use crate::run_state::trainer_state;
use crate::step_loop::StageRun;
use kormo_checkpoint::Checkpoint;
use kormo_dist::SingleRank;
use kormo_model::Model;
use kormo_optim::AdamWConfig;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub use crate::error::TrainError;
pub use crate::phase_data::{packing_options, to_batch};
pub use crate::progress::StageReport;
/// The checkpoint's file names, the same at every world size.
pub use kormo_dist::sharded_checkpoint::{MODEL_FILE, OPTIMIZER_FILE};

/// f32 weights as loaded from a checkpoint or model folder, kept for a backend whose optimizer
/// holds the weights of record ([`TrainBackend::KEEPS_MASTER_WEIGHTS`]); None otherwise.
pub(crate) type LoadedWeights = Option<Vec<Vec<f32>>>;

/// How to run a stage (the command line minus parsing).
#[derive(Clone, Debug, PartialEq)]
pub struct RunOptions {
    pub stage: String,
    pub run_dir: PathBuf,
    pub max_steps: Option<u64>,
    pub stop_after: Option<u64>,
    pub seed: Option<u64>,
    pub resume: bool,
    pub threads: Option<usize>,
    pub log_every: u64,
    /// Ranks (threads of this process, kormo_dist) that train the stage; 1 is the plain trainer.
    pub world_size: usize,
    /// Where the single-process loop runs (`--backend`).
    pub backend: BackendChoice,
    /// Start from this Hugging Face model folder instead of the stage's `init` (not resuming).
    pub init_hf: Option<PathBuf>,
    /// Injected faults (tests of the recovery paths); empty in normal runs.
    pub faults: Faults,
}

/// Faults to inject, so tests exercise the real recovery code paths.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Stage step -> the mean loss that step reports instead of the measured one (once each:
    /// a NaN here is a transient fault that a restore gets past).
    pub loss_override: BTreeMap<u64, f64>,
    /// Checkpoint writes of this invocation fail like a full disk after this many bytes.
    pub checkpoint_disk_budget: Option<u64>,
}

impl RunOptions {
    /// The same options continuing from the newest checkpoint.
    pub fn with_resume(mut self) -> RunOptions {
        self.resume = true;
        self
    }
}

/// Runs stage `opts.stage` of `recipe` on the backend `opts.backend` selects.
pub fn run_stage(
    recipe: &Recipe,
    opts: &RunOptions,
    out: &mut dyn Write,
) -> Result<StageReport, TrainError> {
    run_stage_launched(recipe, opts, None, out)
}

/// [`run_stage`] as one rank of a multi-process job when `launch` is given (launch.rs): the
/// backend on the device of its local rank, the ranks met before anything touches the run
/// directory, rank 0 alone preparing it (lock, data, metrics) and reporting on `out`.
pub fn run_stage_launched(
    recipe: &Recipe,
    opts: &RunOptions,
    launch: Option<&crate::launcher::Launch>,
    out: &mut dyn Write,
) -> Result<StageReport, TrainError> {
    let cpu = opts.threads.map(Cpu::with_threads).unwrap_or_default();
    let threads = cpu.threads();
    let ordinal = launch.map_or(0, |l| l.env.local_rank);
    let selected =
        crate::backend::select_on(opts.backend, &recipe.model, opts.world_size, ordinal)?;
    let line = selected.describe(threads);
    let group = launch
        .map(|l| l.connect().map_err(TrainError))
        .transpose()?;
    let dist_timeout = launch.map_or(std::time::Duration::from_secs(600), |l| l.timeout);
    let mut sink = std::io::sink();
    let out: &mut dyn Write = match &group {
        Some(group) => {
            let rank = kormo_dist::HostTransport::rank(group.as_ref());
            say(
                out,
                format!(
                    "launch: rank {rank}: all {} ranks connected",
                    kormo_dist::HostTransport::world_size(group.as_ref())
                ),
            );
            if rank == 0 {
                out
            } else {
                say(
                    out,
                    format!("launch: rank {rank} is quiet from here on; rank 0 reports"),
                );
                &mut sink
            }
        }
        None => out,
    };
    match selected {
        Selected::Cpu { .. } => {
            let available = available_host_memory();
            run_stage_on(
                recipe,
                opts,
                (group, dist_timeout),
                cpu,
                threads,
                &line,
                available,
                out,
            )
        }
        Selected::Cuda { ops, device } => {
            let available = Some(device.total_memory_bytes as u64);
            ops.set_deterministic(recipe.file.stability.deterministic);
            run_stage_on(
                recipe,
                opts,
                (group, dist_timeout),
                ops,
                threads,
                &line,
                available,
                out,
            )
        }
    }
}

/// [`run_stage`] on backend `ops`, announced by `backend_line`; `threads`: CPU threads (the
/// distributed ranks and the host optimizer use them); `available`: the backend's memory;
/// `group`: the ranks of a launched multi-process job (this process is one) and the time a rank
/// may wait for the others.
#[allow(clippy::too_many_arguments)]
fn run_stage_on<O: TrainBackend>(
    recipe: &Recipe,
    opts: &RunOptions,
    (group, dist_timeout): (
        Option<std::sync::Arc<dyn kormo_dist::HostTransport>>,
        std::time::Duration,
    ),
    ops: O,
    threads: usize,
    backend_line: &str,
    available: Option<u64>,
    out: &mut dyn Write,
) -> Result<StageReport, TrainError> {
    let stage = recipe.stage(&opts.stage).ok_or_else(|| {
        TrainError(format!(
            "unknown stage `{}` (pretrain1, pretrain2, midtrain or sft)",
            opts.stage
        ))
    })?;
    let seed = opts.seed.unwrap_or(recipe.file.seed);
    let stage_dir = opts.run_dir.join(&opts.stage);
    let checkpoints_dir = stage_dir.join("checkpoints");
    let phase_steps: Vec<u64> = stage
        .phases
        .iter()
        .map(|p| {
            opts.max_steps
                .map_or(p.total_steps(), |cap| p.total_steps().min(cap))
        })
        .collect();

    // Rank 0 of a launched job prepares the run directory (lock, data, checkpoints, metrics)
    // while the others wait at a barrier, then they read what it prepared.
    let rank0 = group
        .as_ref()
        .is_none_or(|g| kormo_dist::HostTransport::rank(g.as_ref()) == 0);
    let barrier = |g: &std::sync::Arc<dyn kormo_dist::HostTransport>| {
        kormo_dist::Collectives::barrier(g.as_ref())
            .map_err(|e| TrainError(format!("waiting for rank 0 to prepare the run: {e}")))
    };
    // One job per run directory, held until this function returns (by rank 0 for all ranks).
    let (_lock, stale_lock) = if rank0 {
        let (lock, stale) = RunLock::acquire(&opts.run_dir)?;
        (Some(lock), stale)
    } else {
        barrier(group.as_ref().expect("a rank other than 0 is launched"))?;
        (None, None)
    };
    // Events before the metrics file is open (it is truncated or trimmed first).
    let mut early_events = Vec::new();
    if let Some(pid) = stale_lock {
        early_events.push((
            "stale_lock",
            format!(
                "replaced the stale lock {} of process {pid}, which is no longer running",
                opts.run_dir.join(crate::lock::LOCK_FILE).display()
            ),
        ));
    }

    // The backend and the model's size (checked against the memory before allocating).
    let m = &recipe.model;
    say(
        out,
        format!(
            "kormo train: recipe `{}` ({}), stage {}, run dir {}",
            recipe.file.name,
            recipe.origin,
            opts.stage,
            opts.run_dir.display()
        ),
    );
    say(out, backend_line);
    say(out, format!(
        "model: {} parameters (hidden {}, {} layers, {} heads / {} kv heads of {}, ffn {}, vocab {})",
        human_count(m.param_count() as f64), m.hidden, m.layers, m.heads, m.kv_heads, m.head_dim, m.ffn, m.vocab
    ));

    // Data for every phase, opened (and synthetic corpora generated) before any training, so a
    // missing file stops the run now rather than hours in.
    let mut fingerprint = recipe.tokenizer_fingerprint().map(str::to_string);
    let loaders = open_phase_data(recipe, opts, stage, seed, &mut fingerprint, rank0, out)?;
    let micro_batch_tokens = stage
        .phases
        .iter()
        .map(|p| p.seq_len * p.micro_batch)
        .max()
        .unwrap_or(0);
    let memory = MemoryEstimate::new::<O>(m, micro_batch_tokens, stage.activation_checkpointing);
    say(
        out,
        format!(
            "memory (estimated peak on the {}, micro-batches of {micro_batch_tokens} tokens, activation checkpointing {}): {}",
            O::MEMORY,
            if stage.activation_checkpointing { "on" } else { "off" },
            memory.describe()
        ),
    );
    check_memory::<O>(&memory, available)?;
    let mut model = Model::new(recipe.model.clone(), ops, seed)?;
    model.set_activation_checkpointing(stage.activation_checkpointing);
    let stability = &recipe.file.stability;
    model.set_z_loss(stability.z_loss as f32);
    if stability.z_loss > 0.0 {
        say(
            out,
            format!("z-loss: {:e} x logsumexp^2 per token", stability.z_loss),
        );
    }
    if recipe.mask() == crate::recipe::MaskMode::Causal {
        say(out, "attention: causal over the whole packed row ([attention] mask = \"causal\": a document also sees the documents before it in its row)");
    }
    if recipe.mask() == crate::recipe::MaskMode::Xlda {
        model.set_cross_lingual_attention(true);
        say(out, "attention: cross-lingual document attention ([attention] mask = \"xlda\": a token sees its own document and the earlier documents of its row in the other language, Korean / not Korean)");
    }
    if stability.deterministic {
        say(out, "deterministic: on (CUDA kernels sum in a fixed order, so a stopped and resumed run is bitwise the uninterrupted one; the CPU backend always does)");
    }

    // Where to start: a checkpoint of this stage, the previous stage's final weights, or scratch.
    let (start, weights) = if opts.resume {
        let expected = crate::run_state::Expected {
            recipe,
            stage,
            phase_steps: &phase_steps,
            data: &loaders,
        };
        resume_point(recipe, opts, seed, &expected, &stage_dir, &mut model, &mut early_events, out)?
    } else {
        if rank0 {
            std::fs::remove_dir_all(&checkpoints_dir).or_else(ignore_missing)?;
            std::fs::remove_dir_all(stage_dir.join("final")).or_else(ignore_missing)?;
        }
        let weights = initialise(recipe, stage, opts, &mut model, out)?;
        (Start::default(), weights)
    };
    let mut metrics = rank0
        .then(|| open_metrics(&stage_dir, opts, stage, &start, early_events, out))
        .transpose()?;
    let run = StageRun {
        recipe,
        opts,
        stage,
        seed,
        phase_steps,
        checkpoints_dir,
        final_dir: stage_dir.join("final"),
        start,
        downstream: crate::downstream::Downstream::load(recipe, threads)?,
    };
    if group.is_none() && opts.world_size == 1 {
        let (adamw, grad_clip) = (adamw_config(recipe), recipe.file.optimizer.grad_clip);
        let mut engine = SingleRank::new(model, adamw, grad_clip, threads, weights)?;
        return crate::step_loop::train(&run, &mut engine, loaders, metrics.as_mut(), None, out);
    }
    let mut data = vec![loaders];
    if group.is_none() {
        // Every thread rank needs its own data stream (the same one); rank 0's was opened
        // above.
        for _ in 1..opts.world_size {
            let sink = &mut std::io::sink();
            data.push(open_phase_data(recipe, opts, stage, seed, &mut fingerprint, false, sink)?);
        }
    }
    let params = match weights {
        Some(loaded) => loaded,
        None => kormo_dist::single::read_params(&model)?,
    };
    let rank_ops = model.ops().clone();
    drop(model);
    let prepared = crate::ranks::Prepared {
        run,
        params,
        data,
        metrics,
        threads_per_rank: (threads / opts.world_size).max(1),
    };
    match group {
        Some(group) => {
            if rank0 {
                // The run directory is ready: the other ranks may read it.
                barrier(&group)?;
            }
            crate::ranks::run_process(prepared, group, rank_ops, dist_timeout, out)
        }
        None => crate::ranks::run_threads(prepared, out),
    }
}

/// Rank 0's metrics file of the stage, started afresh or (resuming) cut back to the
/// checkpoint's step, with the events that happened before it was open.
fn open_metrics(
    stage_dir: &Path,
    opts: &RunOptions,
    stage: &StageConfig,
    start: &Start,
    early_events: Vec<(&'static str, String)>,
    out: &mut dyn Write,
) -> Result<MetricsFile, TrainError> {
    let path = stage_dir.join("metrics.jsonl");
    if opts.resume {
        // Lines logged after the checkpoint (a crash between log and save) are replayed.
        crate::metrics::truncate_after(&path, start.step)?;
    }
    let mut metrics = MetricsFile::open(&path, !opts.resume)?;
    let phase = stage.phases.get(start.phase_index).map_or("", |p| p.name.as_str());
    for (event, message) in early_events {
        let record = EventRecord::new(&opts.stage, phase, start.step, event, message);
        log_event(out, &mut metrics, &record)?;
    }
    Ok(metrics)
}

/// Refuses a run whose estimated peak cannot fit in `available` bytes (the host's available
/// memory or the device's), instead of dying in the allocator hours later.
pub(crate) fn check_memory<O: TrainBackend>(
    estimate: &MemoryEstimate,
    available: Option<u64>,
) -> Result<(), TrainError> {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    match available {
        Some(available) if estimate.total() > available => Err(TrainError(format!(
            "training needs about {:.1} GiB of {} memory ({}); {:.1} GiB are available \
             (use a smaller recipe such as --config=tiny, a smaller micro_batch, \
             activation_checkpointing = true in the stage, or a GPU backend)",
            gib(estimate.total()),
            O::MEMORY,
            estimate.describe(),
            gib(available)
        ))),
        _ => Ok(()),
    }
}

/// MemAvailable of /proc/meminfo, where there is one.
pub(crate) fn available_host_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kib| kib * 1024)
}

fn ignore_missing(e: std::io::Error) -> Result<(), TrainError> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(TrainError(e.to_string()))
    }
}

/// Loads the init stage's final weights (optimizer state starts afresh at a stage boundary).
/// Returns the loaded f32 weights when the backend keeps master weights.
fn initialise<O: TrainBackend>(
    recipe: &Recipe,
    stage: &StageConfig,
    opts: &RunOptions,
    model: &mut Model<O>,
    out: &mut dyn Write,
) -> Result<LoadedWeights, TrainError> {
    if let Some(folder) = &opts.init_hf {
        return init_from_hf(recipe, folder, model, out);
    }
    if let Some(folder) = stage.init.strip_prefix("hf:") {
        return init_from_hf(recipe, &recipe.base_dir.join(folder), model, out);
    }
    if stage.init == "scratch" {
        say(
            out,
            "init: from scratch (normal(0, 0.02) weights, unit norms)",
        );
        return Ok(None);
    }
    let dir = opts.run_dir.join(&stage.init).join("final");
    if !dir.join(kormo_checkpoint::MANIFEST_FILE).is_file() {
        let how = format!(
            "tools/bazel run //rust:train -- --stage={}{}",
            stage.init,
            config_flag(recipe)
        );
        if recipe.file.scratch_if_init_missing {
            say(out, format!(
                "init: no {} checkpoint at {} (it is made by `{how}`); the {} recipe starts from scratch instead",
                stage.init, dir.display(), recipe.file.name
            ));
            return Ok(None);
        }
        return Err(TrainError(format!(
            "stage {} starts from the final checkpoint of stage {}, which is missing: {}\nmake it with: {how}",
            opts.stage, stage.init, dir.display()
        )));
    }
    let checkpoint = Checkpoint::load(&dir)?;
    let weights = load_weights(&checkpoint, model)?;
    say(
        out,
        format!(
            "init: weights of {} (step {}), fresh optimizer state",
            dir.display(),
            checkpoint.manifest.run.step
        ),
    );
    Ok(weights)
}

/// Loads the weights of a Hugging Face model folder (kormo_hf: KORMo or Llama naming, f32 or
/// bf16), whose config.json must describe the recipe's model.
fn init_from_hf<O: TrainBackend>(
    recipe: &Recipe,
    folder: &Path,
    model: &mut Model<O>,
    out: &mut dyn Write,
) -> Result<LoadedWeights, TrainError> {
    let mut weights = kormo_hf::load_hf_folder(folder).map_err(|e| TrainError(e.to_string()))?;
    // A Hugging Face folder has no multi-token-prediction heads: with `[model] mtp_depth >= 1`
    // the trunk and next-token head come from the folder and the MTP heads keep their fresh
    // initialisation.
    let fresh_mtp = recipe.model.mtp_depth > 0 && weights.config.mtp_depth == 0;
    if fresh_mtp {
        weights.config.mtp_depth = recipe.model.mtp_depth;
        weights.config.mtp_loss_weight = recipe.model.mtp_loss_weight;
    }
    if weights.config != recipe.model {
        let ours = serde_json::to_value(&recipe.model).expect("config serialises");
        let theirs = serde_json::to_value(&weights.config).expect("config serialises");
        let differing: Vec<String> = ours
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(key, value)| theirs.get(key.as_str()) != Some(value))
            .map(|(key, value)| {
                format!(
                    "{key}: folder {}, recipe {value}",
                    theirs.get(key.as_str()).unwrap_or(&serde_json::Value::Null)
                )
            })
            .collect();
        return Err(TrainError(format!(
            "{}: the model in config.json is not the recipe's model ({}); set [model] in {} to match",
            folder.join("config.json").display(),
            differing.join("; "),
            recipe.origin
        )));
    }
    for tensor in &weights.tensors {
        model.write_param(&tensor.name, &tensor.values)?;
    }
    say(
        out,
        format!(
            "init: weights of Hugging Face folder {}, fresh optimizer state{}",
            folder.display(),
            if fresh_mtp {
                format!(
                    "; the {} multi-token-prediction head(s) start fresh (the folder has none)",
                    recipe.model.mtp_depth
                )
            } else {
                String::new()
            }
        ),
    );
    // The masters must follow the model's tensor order, which the folder need not have.
    Ok(if O::KEEPS_MASTER_WEIGHTS {
        let mut by_name: BTreeMap<String, Vec<f32>> = weights
            .tensors
            .into_iter()
            .map(|t| (t.name, t.values))
            .collect();
        Some(
            model
                .param_specs()
                .iter()
                .map(|spec| match by_name.remove(&spec.name) {
                    Some(values) => Ok(values),
                    None if fresh_mtp && kormo_model::params::is_mtp_tensor(&spec.name) => {
                        let mut values = vec![0.0; spec.numel()];
                        model.read_param(&spec.name, &mut values)?;
                        Ok(values)
                    }
                    None => Err(TrainError(format!("{}: no tensor {}", folder.display(), spec.name))),
                })
                .collect::<Result<_, _>>()?,
        )
    } else {
        None
    })
}

/// Finds the newest checkpoint of this stage that loads cleanly and loads its weights; the
/// optimizer and data state are restored once the phase's optimizer and loader exist. A
/// checkpoint that fails its size or checksum checks (a crash or a bad disk) is skipped for
/// the one before it, with a message and an event; a checkpoint of another recipe, seed or
/// length is an error, since falling back would not help.
#[allow(clippy::too_many_arguments)]
fn resume_point<O: TrainBackend>(
    recipe: &Recipe,
    opts: &RunOptions,
    seed: u64,
    expected: &crate::run_state::Expected<'_>,
    stage_dir: &Path,
    model: &mut Model<O>,
    events: &mut Vec<(&'static str, String)>,
    out: &mut dyn Write,
) -> Result<(Start, LoadedWeights), TrainError> {
    kormo_checkpoint::recover_interrupted(&stage_dir.join("checkpoints"));
    kormo_checkpoint::recover_interrupted(stage_dir);
    let mut candidates: Vec<(u64, PathBuf)> =
        kormo_checkpoint::list_steps(&stage_dir.join("checkpoints"));
    let final_dir = stage_dir.join("final");
    if final_dir.join(kormo_checkpoint::MANIFEST_FILE).is_file() {
        candidates.push((u64::MAX, final_dir));
    }
    candidates.sort();
    if candidates.is_empty() {
        return Err(TrainError(format!(
            "--resume: no checkpoint in {} (run without --resume to start stage {})",
            stage_dir.display(),
            opts.stage
        )));
    }
    let mut damaged = Vec::new();
    let (dir, checkpoint) = loop {
        let Some((_, dir)) = candidates.pop() else {
            return Err(TrainError(format!(
                "--resume: every checkpoint in {} is damaged:\n  {}\n(run without --resume to start stage {} again)",
                stage_dir.display(),
                damaged.join("\n  "),
                opts.stage
            )));
        };
        match Checkpoint::load(&dir) {
            Ok(checkpoint) => break (dir, checkpoint),
            Err(e) => {
                let message = format!("{e}");
                if let Some((_, previous)) = candidates.last() {
                    let line = format!(
                        "checkpoint {} is damaged ({message}); falling back to {}",
                        dir.display(),
                        previous.display()
                    );
                    // Printed and logged with the other early events (log_event).
                    events.push(("checkpoint_fallback", line));
                }
                damaged.push(message);
            }
        }
    };
    let run = &checkpoint.manifest.run;
    let mismatch = |what: &str, theirs: String, ours: String| {
        TrainError(format!(
            "--resume: {} was written with {what} {theirs}, this run has {ours}",
            dir.display()
        ))
    };
    if run.stage != opts.stage {
        return Err(mismatch("stage", run.stage.clone(), opts.stage.clone()));
    }
    if run.config_hash != recipe.hash() {
        return Err(mismatch(
            "recipe hash",
            run.config_hash.clone(),
            recipe.hash(),
        ));
    }
    let state = trainer_state(&checkpoint)?;
    if state.seed != seed {
        return Err(mismatch("seed", state.seed.to_string(), seed.to_string()));
    }
    crate::run_state::validate(&checkpoint, &state, expected)?;
    let weights = load_weights(&checkpoint, model)?;
    say(
        out,
        format!(
            "resume: {} (stage step {}, phase {} step {})",
            dir.display(),
            run.step,
            run.phase,
            state.phase_step
        ),
    );
    let phase_done = state.phase_step >= state.phase_steps;
    let start = Start {
        phase_index: state.phase_index + phase_done as usize,
        phase_step: if phase_done { 0 } else { state.phase_step },
        step: run.step,
        tokens: state.tokens,
        resumed: (!phase_done).then_some(checkpoint),
    };
    Ok((start, weights))
}

/// Loads a checkpoint's weights into `model`; keeps the f32 values when the backend's optimizer
/// holds the weights of record.
fn load_weights<O: TrainBackend>(
    checkpoint: &Checkpoint,
    model: &mut Model<O>,
) -> Result<LoadedWeights, TrainError> {
    let file = checkpoint.file(MODEL_FILE)?;
    let specs = model.param_specs().to_vec();
    let mut kept = Vec::new();
    for spec in &specs {
        let values = file.f32(&spec.name, Some(&spec.shape))?;
        model.write_param(&spec.name, &values)?;
        if O::KEEPS_MASTER_WEIGHTS {
            kept.push(values);
        }
    }
    Ok(O::KEEPS_MASTER_WEIGHTS.then_some(kept))
}

pub(crate) fn adamw_config(recipe: &Recipe) -> AdamWConfig {
    let o = &recipe.file.optimizer;
    AdamWConfig {
        beta1: o.beta1,
        beta2: o.beta2,
        eps: o.eps,
        weight_decay: o.weight_decay,
    }
}
