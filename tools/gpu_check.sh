#!/bin/bash
# One-command GPU check of kormo's kernels (docs/gpu.md explains the whole round trip).
#
#   tools/gpu_check.sh build          HERE (no GPU needed): builds the release GPU test binary, the
#                                     kernel bench, the training-step bench (model_step) and the
#                                     trainer (train, for `train --benchmark`) with the kernels
#                                     embedded, copies them to .gpu-carry/ (git-ignored; carry it
#                                     to the device).
#   tools/gpu_check.sh run [OUT_DIR]  ON THE DEVICE: runs every GPU test (kernels, and the model
#                                     on CudaOps against the CPU backend), compute-sanitizer
#                                     memcheck + racecheck on them (when the tool exists), the
#                                     training-step benchmarks (model-step, train --benchmark),
#                                     NCCL at world size 1, the Hugging Face export against
#                                     transformers,
#                                     the kernel benchmarks,
#                                     bench/torch_reference.py (its non-attention and attention
#                                     rows as two steps), Nsight Compute profiles (ncu) of the
#                                     attention kernels at one or two shapes and of the training
#                                     step's ten costliest kernels (ncu-step; CSV summaries in the
#                                     logs), and writes
#                                     OUT_DIR/<date>-<device>.md (default bench/results) plus logs.
#                                     KORMO_GPU_STEPS="bench ncu ..." runs only the named steps
#                                     (docs/gpu.md lists them).
#
# Budget: every step has its own timeout, cut so the whole run ends within BUDGET_S (570 s) for
# the device tool's 600 s per-call limit; a step that times out (or finds no time left) is
# reported as such, and the rest still runs.
set -uo pipefail

cd "$(dirname "$0")/.."
CARRY=.gpu-carry

# Path of the release test executable `$2` of crate `$1` (cargo names it with a hash), from
# cargo's JSON messages; exits when there is none.
test_executable() {
    local path
    path="$(cargo test --release -p "$1" --test "$2" --no-run --message-format=json \
        | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$2")"
    [[ -n "$path" ]] || { echo "gpu_check build: no $2 test executable in $1" >&2; exit 1; }
    echo "$path"
}

build() {
    set -e
    command -v cargo >/dev/null || { echo "gpu_check build: cargo not found" >&2; exit 1; }
    mkdir -p "$CARRY"
    # The test executable's path comes from cargo's JSON messages (its name carries a hash).
    local test_bin
    test_bin="$(test_executable kormo-cuda gpu)"
    local nccl_bin fsdp_bin
    nccl_bin="$(test_executable kormo-dist nccl_device)"
    fsdp_bin="$(test_executable kormo-dist device_fsdp)"
    cargo build --release -p kormo-cuda --bin bench --bin model_step
    cargo build --release -p kormo-train --bin train
    cargo build --release -p kormo-hf --bin hf
    cp "$nccl_bin" "$CARRY/nccl-test"
    cp "$fsdp_bin" "$CARRY/device-fsdp-test"
    # A few steps of the tiny recipe, exported in both flavours with kormo's own logits, for the
    # transformers comparison on the device (tools/hf_transformers_check.py).
    local hf_run="$CARRY/hf-run" tokens="256,72,101,108,108,111,32,236,149,136,257,3,200"
    rm -rf "$hf_run" "$CARRY/hf"
    target/release/train --stage=pretrain1 --max-steps=3 --backend=cpu --run-dir="$hf_run" >/dev/null
    local flavor
    for flavor in llama kormo; do
        target/release/hf export --model "$hf_run/pretrain1/final" --out "$CARRY/hf/$flavor" --flavor "$flavor" --dtype f32 >/dev/null
        target/release/hf logits --model "$CARRY/hf/$flavor" --tokens "$tokens" --out "$CARRY/hf/$flavor-logits.json" >/dev/null
    done
    rm -rf "$hf_run"
    cp "$test_bin" "$CARRY/gpu-tests"
    cp target/release/bench "$CARRY/bench"
    cp target/release/model_step "$CARRY/model-step"
    cp target/release/train "$CARRY/train"
    local bin
    for bin in gpu-tests bench train; do
        grep -q kormo_attention_fwd_hd128_doc "$CARRY/$bin" && continue
        echo "gpu_check build: $CARRY/$bin carries no kernels (was nvcc found at build time?)" >&2
        exit 1
    done
    {
        git rev-parse HEAD 2>/dev/null || echo "unknown"
        git status --porcelain 2>/dev/null | grep -q . && echo "(working tree had uncommitted changes)"
    } >"$CARRY/COMMIT"
    du -sh "$CARRY"
    echo "built $CARRY/{gpu-tests,nccl-test,device-fsdp-test,bench,model-step,train,hf}; carry '$CARRY' with the device tool (docs/gpu.md)"
}

# The whole run must end within the device tool's per-call limit (run(timeout_s=600)).
BUDGET_S="${KORMO_GPU_BUDGET_S:-570}"

# Runs "$@" with a timeout (cut to what is left of BUDGET_S), appending stdout+stderr to a log;
# prints the exit status (124 on timeout, or when no time was left to start it).
run_logged() {
    local seconds="$1" log="$2"
    shift 2
    local left=$((BUDGET_S - SECONDS))
    ((left < seconds)) && seconds=$left
    if ((seconds <= 5)); then
        echo "not run: the ${BUDGET_S} s budget of this run is spent" >>"$log"
        echo 124
        return
    fi
    timeout "$seconds" "$@" >>"$log" 2>&1
    echo $?
}

find_sanitizer() {
    command -v compute-sanitizer && return
    local c
    for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer; do
        [[ -x "$c" ]] && { echo "$c"; return; }
    done
}

# Nsight Compute's command-line profiler: PATH, the CUDA toolkits, then the standalone installs
# (newest version first).
find_ncu() {
    command -v ncu && return
    local c
    for c in /usr/local/cuda/bin/ncu /usr/local/cuda-*/bin/ncu \
        $(printf '%s\n' /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda*/nsight-compute*/ncu | sort -rV); do
        [[ -x "$c" ]] && { echo "$c"; return; }
    done
}

# Directory holding libcublasLt (CudaOps' GEMMs): the loader path, a CUDA toolkit, or the pip
# wheels that PyTorch brings (nvidia/cublas/lib, nvidia/cu13/lib).
find_cublaslt_dir() {
    local lib
    lib="$(ldconfig -p 2>/dev/null | awk '/libcublasLt\.so/ {print $NF; exit}')"
    [[ -n "$lib" ]] && { dirname "$lib"; return; }
    for lib in /usr/local/cuda/lib64/libcublasLt.so* /usr/local/cuda-*/lib64/libcublasLt.so* \
        $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null | tr ' ' '\n' \
            | sed 's|$|/nvidia/*/lib/libcublasLt.so*|'); do
        [[ -e "$lib" ]] && { dirname "$lib"; return; }
    done
}

# Directory holding libnccl (the NCCL communicator): the loader path or PyTorch's nvidia/nccl wheel.
find_nccl_dir() {
    local lib
    lib="$(ldconfig -p 2>/dev/null | awk '/libnccl\.so/ {print $NF; exit}')"
    [[ -n "$lib" ]] && { dirname "$lib"; return; }
    for lib in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null | tr ' ' '\n' \
        | sed 's|$|/nvidia/*/lib/libnccl.so*|'); do
        [[ -e "$lib" ]] && { dirname "$lib"; return; }
    done
}

# Starts "$@" in the background under run_logged; its exit status lands in $logs/NAME.rc.
start_logged() {
    local name="$1" seconds="$2"
    shift 2
    (run_logged "$seconds" "$logs/$name.log" "$@" >"$logs/$name.rc") &
}

# The exit status a start_logged step left (124 when it never wrote one).
status_of() {
    cat "$logs/$1.rc" 2>/dev/null || echo 124
}

# Timeout of step $1 in seconds: $2, or KORMO_GPU_TIMEOUT_<STEP> (the name upper-cased, `-` as
# `_`), e.g. KORMO_GPU_TIMEOUT_TORCH_ATTENTION=500 for a call that runs only that step.
step_seconds() {
    local var
    var="KORMO_GPU_TIMEOUT_$(tr 'a-z-' 'A-Z_' <<<"$1")"
    echo "${!var:-$2}"
}

# Whether step $1 is selected (KORMO_GPU_STEPS, space-separated; all steps when unset).
wanted() {
    [[ -z "${KORMO_GPU_STEPS:-}" ]] && return 0
    [[ " $KORMO_GPU_STEPS " == *" $1 "* ]]
}

# A real training run on the device: the tiny recipe with head dim 64 (the kernels' smallest),
# 60 steps on CUDA, stopped at 30 and resumed from the checkpoint, against the same 60 steps on
# the CPU backend uninterrupted. Prints both loss curves and the final relative difference.
train_smoke() {
    local dir="$1"
    mkdir -p "$dir"
    tools/gpu_smoke_recipe.sh gpu-smoke >"$dir/gpu-smoke.toml"
    local common=(--config="$dir/gpu-smoke.toml" --stage=pretrain1 --max-steps=60 --log-every=10)
    "$CARRY/train" "${common[@]}" --backend=cuda --stop-after=30 --run-dir="$dir/cuda" || return 1
    "$CARRY/train" "${common[@]}" --backend=cuda --resume --run-dir="$dir/cuda" || return 1
    "$CARRY/train" "${common[@]}" --backend=cpu --run-dir="$dir/cpu" || return 1
    python3 - "$dir/cuda/pretrain1/metrics.jsonl" "$dir/cpu/pretrain1/metrics.jsonl" <<'PY'
import json, sys
def losses(path):
    return {r["step"]: r["loss"] for r in map(json.loads, open(path)) if "loss" in r and "step" in r}
cuda, cpu = losses(sys.argv[1]), losses(sys.argv[2])
print("| step | loss cuda (stopped at 30, resumed) | loss cpu | relative difference |")
print("| --- | --- | --- | --- |")
for step in sorted(set(cuda) & set(cpu)):
    print(f"| {step} | {cuda[step]:.5f} | {cpu[step]:.5f} | {abs(cuda[step] - cpu[step]) / abs(cpu[step]):.2e} |")
last = max(set(cuda) & set(cpu))
rel = abs(cuda[last] - cpu[last]) / abs(cpu[last])
print(f"final step {last}: relative difference {rel:.2e} ({'PASS' if rel < 0.02 else 'FAIL'}: bound 2e-2, bf16 vs f32 over 60 steps)")
sys.exit(0 if rel < 0.02 else 1)
PY
}

# Deterministic mode on the device ([stability] deterministic = true): the gpu-smoke recipe's 60
# CUDA steps stopped at 30 and resumed must equal 60 uninterrupted steps bit for bit (every
# logged loss and the final weights' bytes).
train_deterministic() {
    local dir="$1"
    mkdir -p "$dir"
    { tools/gpu_smoke_recipe.sh gpu-smoke-deterministic; printf '\n[stability]\ndeterministic = true\n'; } >"$dir/recipe.toml"
    local common=(--config="$dir/recipe.toml" --stage=pretrain1 --max-steps=60 --log-every=5 --backend=cuda)
    "$CARRY/train" "${common[@]}" --stop-after=30 --run-dir="$dir/resumed" || return 1
    "$CARRY/train" "${common[@]}" --resume --run-dir="$dir/resumed" || return 1
    "$CARRY/train" "${common[@]}" --run-dir="$dir/straight" || return 1
    python3 - "$dir/resumed/pretrain1" "$dir/straight/pretrain1" <<'PY'
import json, sys
def losses(stage):
    return {r["step"]: r["loss"] for r in map(json.loads, open(stage + "/metrics.jsonl")) if "loss" in r and "step" in r}
a, b = losses(sys.argv[1]), losses(sys.argv[2])
same_losses = a == b and len(a) > 0
same_weights = open(sys.argv[1] + "/final/model.safetensors", "rb").read() == open(sys.argv[2] + "/final/model.safetensors", "rb").read()
print(f"| logged steps | losses bitwise equal | final weights bitwise equal |")
print(f"| --- | --- | --- |")
print(f"| {len(a)} | {same_losses} | {same_weights} |")
ok = same_losses and same_weights
print(f"deterministic stop/resume: {'PASS' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
}

# The report section of check $1 started in the background (start_logged): title $2, the lines of
# its log matching the grep pattern $3, and on a non-zero exit the status and the log's tail.
report_run() {
    local name="$1" title="$2" pattern="$3" status
    wanted "$name" || return 0
    {
        echo "## $title"
        echo
        grep "$pattern" "$logs/$name.log"
        status="$(status_of "$name")"
        [[ "$status" == 0 ]] || { echo "($name exit status $status; tail of its log:)"; echo '```'; tail -8 "$logs/$name.log"; echo '```'; }
        echo
    } >>"$report"
}

# One timing step: runs "$@" (if step $1 is wanted) under a timeout of $3 s (step_seconds) and
# appends a report section titled $2 with its output: `raw` (it prints markdown), `fenced` (a
# code block) or `table` (only its table and device lines); a non-zero exit adds the status and
# the log's tail, and a last line says how long the step took.
timed_step() {
    local name="$1" title="$2" seconds form="$4" status t0=$SECONDS
    seconds="$(step_seconds "$1" "$3")"
    shift 4
    wanted "$name" || return 0
    status=$(run_logged "$seconds" "$logs/$name.log" "$@")
    {
        echo "## $title"
        echo
        case "$form" in
            raw) cat "$logs/$name.log" ;;
            fenced) echo '```'; cat "$logs/$name.log"; echo '```' ;;
            table) grep "^|\|^device\|total" "$logs/$name.log" ;;
        esac
        [[ "$status" == 0 ]] || { echo "($name exit status $status; tail of its log:)"; echo '```'; tail -5 "$logs/$name.log"; echo '```'; }
        echo
        echo "($name: $((SECONDS - t0)) s of its ${seconds} s timeout)"
        echo
    } >>"$report"
}

# The attention shapes the ncu step profiles, in order (bench's labels; a second one only when
# the first leaves time).
NCU_SHAPES=("b4 s8192 h32/8 d128 docs of 2048" "b4 s8192 h32/8 d128 causal")
# Kernel launches profiled per shape. bench calls each row's function once to warm up, then
# --iters times (1 here); the forward row launches 1 attention kernel, each backward row 3
# (prepare, main or dK/dV, finish or dQ): 7 per path per call, and two paths (sm90, sm80) on
# compute capability 9.0: 2 x 7 x 2 = 28 (14 on other devices, where the limit is not reached).
NCU_LAUNCHES=28

# Markdown table of one ncu CSV (--csv --page details): a row per profiled launch, in launch
# order; a metric this ncu version does not report prints "-", and the names it does report are
# listed when one of the table's is missing.
ncu_summary() {
    python3 - "$1" <<'PY'
import csv, sys
lines = open(sys.argv[1], errors="replace").read().splitlines()
start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
if start is None:
    print(f"(no CSV rows in {sys.argv[1]})")
    sys.exit(1)
launches = {}
for r in csv.DictReader(lines[start:]):
    launch = launches.setdefault(r.get("ID"), {"name": r.get("Kernel Name") or "?", "grid": r.get("Grid Size") or "",
                                               "block": r.get("Block Size") or "", "metrics": {}})
    name = (r.get("Metric Name") or "").strip()
    if name:
        launch["metrics"][name.lower()] = ((r.get("Metric Value") or "").strip(), (r.get("Metric Unit") or "").strip())
TO_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6, "s": 1e6}
# (column, metric names across ncu versions, time?)
COLUMNS = [
    ("duration (us)", ["Duration", "gpu__time_duration.sum"], True),
    ("SM throughput %", ["Compute (SM) Throughput", "Compute (SM) [%]", "SM [%]"], False),
    ("memory throughput %", ["Memory Throughput", "Memory [%]"], False),
    ("DRAM throughput %", ["DRAM Throughput"], False),
    ("registers/thread", ["Registers Per Thread"], False),
    ("achieved occupancy %", ["Achieved Occupancy"], False),
    ("theoretical occupancy %", ["Theoretical Occupancy"], False),
]
def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None
def cell(metrics, names, is_time):
    for n in names:
        if n.lower() in metrics:
            value, unit = metrics[n.lower()]
            x = number(value)
            if x is None:
                return f"{value} {unit}".strip()
            if is_time and unit in TO_US:
                return f"{x * TO_US[unit]:.1f}"
            return f"{x:g}" + ("" if unit in ("%", "") or not is_time and unit.startswith("register") else f" {unit}")
    return "-"
print("| # | kernel | grid | block | " + " | ".join(c for c, _, _ in COLUMNS) + " |")
print("| --- " * (4 + len(COLUMNS)) + "|")
for i, launch in enumerate(launches.values()):
    cells = [cell(launch["metrics"], names, t) for _, names, t in COLUMNS]
    print(f"| {i} | {launch['name']} | {launch['grid']} | {launch['block']} | " + " | ".join(cells) + " |")
present = sorted({n for l in launches.values() for n in l["metrics"]})
missing = [c for c, names, _ in COLUMNS if not any(n.lower() in present for n in names)]
if missing:
    print(f"\nnot in this CSV: {', '.join(missing)}; its metrics: {', '.join(present) or 'none'}")
PY
}

# The ncu step: bench --attention-only --iters 1 --only SHAPE under Nsight Compute for each of
# NCU_SHAPES while the step's `seconds` last; per shape the .ncu-rep (Nsight Compute opens it),
# its CSV (details page) in the logs and a summary table in the report.
ncu_step() {
    local seconds ncu deadline shape tag status left i=0 t0=$SECONDS
    seconds="$(step_seconds ncu "$1")"
    wanted ncu || return 0
    {
        echo "## Nsight Compute profiles of the attention kernels (ncu: SpeedOfLight, Occupancy, LaunchStats)"
        echo
    } >>"$report"
    ncu="$(find_ncu)"
    if [[ -z "$ncu" ]]; then
        { echo "ncu not found: no profiles"; echo; } >>"$report"
        return 0
    fi
    {
        echo "$ncu ($("$ncu" --version 2>/dev/null | tail -1)); one warm-up and one timed call per bench row, so each"
        echo "launch appears twice; durations are under ncu's clock control (base clocks), not bench's timings."
        echo
    } >>"$report"
    deadline=$((SECONDS + seconds))
    for shape in "${NCU_SHAPES[@]}"; do
        i=$((i + 1))
        tag="ncu-$i-$(tr -c 'A-Za-z0-9\n' '-' <<<"$shape" | tr -s '-')"
        left=$((deadline - SECONDS))
        echo "### $shape" >>"$report"
        echo >>"$report"
        if ((left < 20)); then
            { echo "not profiled: the step's ${seconds} s ran out"; echo; } >>"$report"
            continue
        fi
        status=$(run_logged "$left" "$logs/$tag.log" "$ncu" -f -o "$logs/$tag" --section SpeedOfLight \
            --section Occupancy --section LaunchStats --kernel-name regex:attention --launch-skip 0 \
            --launch-count "$NCU_LAUNCHES" "$CARRY/bench" --attention-only --iters 1 --only "$shape")
        [[ -f "$logs/$tag.ncu-rep" ]] && "$ncu" --import "$logs/$tag.ncu-rep" --csv --page details \
            >"$logs/$tag.csv" 2>>"$logs/$tag.log"
        {
            [[ -s "$logs/$tag.csv" ]] && ncu_summary "$logs/$tag.csv"
            [[ "$status" == 0 && -s "$logs/$tag.csv" ]] || {
                echo "(ncu exit status $status; tail of $tag.log:)"
                echo '```'
                tail -8 "$logs/$tag.log"
                echo '```'
            }
            echo
        } >>"$report"
        # The logs travel as one archive: a report past 16 MiB stays behind (its CSV travels).
        if [[ -n "$(find "$logs" -name "$tag.ncu-rep" -size +16M)" ]]; then
            rm -f "$logs/$tag.ncu-rep"
            { echo "($tag.ncu-rep was over 16 MiB: left out of the logs)"; echo; } >>"$report"
        fi
    done
    { echo "(ncu: $((SECONDS - t0)) s of its ${seconds} s timeout)"; echo; } >>"$report"
}

# Markdown table of the top 10 rows of bench/torch_model_reference.py --profile-csv (torch.profiler
# on the torch.compile step), or one line saying why there is none.
torch_profile_table() {
    echo "### torch.compile step: top 10 kernels by self CUDA time (torch.profiler; all 25 in torch-compile-profile.csv in the logs)"
    echo
    if [[ ! -s "$1" ]]; then
        echo "(no profile: $(basename "$1") not written; torch-model.log says why)"
        echo
        return 0
    fi
    python3 - "$1" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))[:10]
columns = [("rank", "rank"), ("name", "kernel"), ("calls", "calls (2 steps)"), ("self_cuda_ms_per_step", "self CUDA ms per step"),
           ("percent_of_step", "% of step"), ("cuda_total_us", "CUDA time total us (2 steps)")]
print("| " + " | ".join(title for _, title in columns) + " |")
print("| --- " * len(columns) + "|")
for r in rows:
    cells = [(r.get(key) or "-").replace("|", "\\|") for key, _ in columns]
    cells[1] = cells[1] if len(cells[1]) <= 100 else cells[1][:60] + "..." + cells[1][-37:]
    print("| " + " | ".join(cells) + " |")
PY
    echo
}

# nsys (Nsight Systems' command line), for the ncu-step's cheap kernel-time summary: PATH, the
# CUDA toolkits, then the standalone installs (newest version first).
find_nsys() {
    command -v nsys && return
    local c
    for c in /usr/local/cuda/bin/nsys /usr/local/cuda-*/bin/nsys \
        $(printf '%s\n' /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda*/nsight-systems*/bin/nsys | sort -rV); do
        [[ -x "$c" ]] && { echo "$c"; return; }
    done
}

# The ncu-step's parsing (python3), by mode:
#   nsys-kernels SUMMARY_CSV OUT_CSV    nsys's cuda_gpu_kern_sum (or gpukernsum) CSV -> OUT_CSV
#   ncu-kernels RAW_CSV OUT_CSV         ncu's --page raw CSV of gpu__time_duration.sum per launch -> OUT_CSV
#       OUT_CSV: rank,kernel,function,total_ns,calls,avg_ns,percent, every kernel, largest total first
#   regex KERNELS_CSV N                 prints the ncu --kernel-id name regex of the top N kernels' functions
#   summary KERNELS_CSV N RAW_CSV OUT   the top N kernels joined with their profiled launch in ncu's
#                                       --page raw CSV (absent: '-' columns), written to OUT as CSV
#                                       and printed as a markdown table
step_profile_py() {
    python3 - "$@" <<'PY'
import csv, re, sys

def number(text):
    try:
        return float(str(text).replace(",", "").strip())
    except ValueError:
        return None

def function_of(name):
    """The kernel's function name without return type, namespaces, template arguments or
    parameters: what ncu matches --kernel-name/--kernel-id against (--kernel-name-base function)."""
    s = name.strip().replace("(anonymous namespace)", "anonymous")
    if s.startswith("void "):
        s = s[5:]
    out, depth = [], 0
    for ch in s:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(depth - 1, 0)
        elif ch == "(" and depth == 0:
            break
        elif depth == 0:
            out.append(ch)
    return "".join(out).strip().split("::")[-1].strip() or s

def csv_from(path, is_header):
    lines = open(path, errors="replace").read().splitlines()
    start = next((i for i, line in enumerate(lines) if is_header(line)), None)
    return [] if start is None else list(csv.reader(lines[start:]))

def write_kernels(path, kernels):
    kernels.sort(key=lambda k: -k["total_ns"])
    total = sum(k["total_ns"] for k in kernels) or 1.0
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "kernel", "function", "total_ns", "calls", "avg_ns", "percent"])
        for i, k in enumerate(kernels, 1):
            w.writerow([i, k["name"], function_of(k["name"]), f"{k['total_ns']:.0f}", k["calls"],
                        f"{k['total_ns'] / max(k['calls'], 1):.0f}", f"{100 * k['total_ns'] / total:.2f}"])
    print(f"{len(kernels)} kernels, {total / 1e6:.1f} ms of kernel time")

def read_kernels(path):
    return list(csv.DictReader(open(path)))

def raw_table(path):
    """ncu --page raw --csv: header row, then (usually) a units row, then one row per launch.
    Returns (rows as {lower-case column: value}, {lower-case column: unit})."""
    rows = csv_from(path, lambda line: line.startswith('"ID"'))
    if not rows:
        return [], {}
    header = [h.strip().lower() for h in rows[0]]
    units, data = {}, []
    for r in rows[1:]:
        d = dict(zip(header, r))
        if number(d.get("id", "")) is None:
            if not data and not units:
                units = {k: v.strip() for k, v in d.items()}
            continue
        data.append(d)
    return data, units

TO_NS = {"nsecond": 1.0, "ns": 1.0, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6, "second": 1e9, "s": 1e9}
PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15}

mode = sys.argv[1]
if mode == "nsys-kernels":
    rows = csv_from(sys.argv[2], lambda line: "Name" in line and "Total Time" in line)
    if not rows:
        print(f"no kernel summary in {sys.argv[2]}")
        sys.exit(1)
    header = [h.strip() for h in rows[0]]
    col = lambda *keys: next((i for i, h in enumerate(header) if any(k in h for k in keys)), None)
    name_i, total_i, calls_i = col("Name"), col("Total Time"), col("Instances", "Calls", "Count")
    scale = 1.0 if "(ns)" in header[total_i] or "(" not in header[total_i] else \
        TO_NS.get(header[total_i].split("(")[-1].rstrip(")").strip(), 1.0)
    kernels = []
    for r in rows[1:]:
        if len(r) <= max(name_i, total_i) or number(r[total_i]) is None:
            continue
        calls = number(r[calls_i]) if calls_i is not None and calls_i < len(r) else None
        kernels.append({"name": r[name_i], "total_ns": number(r[total_i]) * scale, "calls": int(calls or 0)})
    write_kernels(sys.argv[3], kernels)
elif mode == "ncu-kernels":
    data, units = raw_table(sys.argv[2])
    key = "gpu__time_duration.sum"
    scale = TO_NS.get(units.get(key, "nsecond"), 1.0)
    by_name = {}
    for d in data:
        t = number(d.get(key, ""))
        if t is None:
            continue
        k = by_name.setdefault(d.get("kernel name", "?"), {"name": d.get("kernel name", "?"), "total_ns": 0.0, "calls": 0})
        k["total_ns"] += t * scale
        k["calls"] += 1
    if not by_name:
        print(f"no {key} values in {sys.argv[2]}")
        sys.exit(1)
    write_kernels(sys.argv[3], list(by_name.values()))
elif mode == "regex":
    functions = []
    for k in read_kernels(sys.argv[2])[: int(sys.argv[3])]:
        if k["function"] not in functions:
            functions.append(k["function"])
    # No ':' in it (--kernel-id separates its fields with ':'): the function name, alone or after
    # a namespace or any other non-identifier character.
    print("(^|[^A-Za-z0-9_])(" + "|".join(re.escape(f) for f in functions) + ")$")
elif mode == "summary":
    top = read_kernels(sys.argv[2])[: int(sys.argv[3])]
    data, units = raw_table(sys.argv[4]) if sys.argv[4] != "-" else ([], {})
    # Each top kernel gets one profiled launch: the same demangled name first, else the same function.
    launch_of, used = {}, set()
    for exact in (True, False):
        for i, k in enumerate(top):
            if i in launch_of:
                continue
            for j, d in enumerate(data):
                name = d.get("kernel name", "")
                if j not in used and (name == k["kernel"] if exact else function_of(name) == k["function"]):
                    launch_of[i] = d
                    used.add(j)
                    break

    def metric(d, *names):
        for n in names:
            v = number(d.get(n, ""))
            if v is not None:
                return v, units.get(n, "")
        return None, ""

    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    def stalls(d):
        found = []
        for col, value in d.items():
            m = re.search(r"issue_stalled_(\w+?)_per_(issue|warp)_active\.ratio$", col) \
                or re.search(r"warp_latency_issue_stalled_(\w+?)\.ratio$", col)
            v = number(value)
            if m and v is not None and m.group(1) not in ("selected",) and "_not_issued" not in col:
                found.append((v, m.group(1)))
        found.sort(reverse=True)
        return "; ".join(f"{name} {v:.1f}" for v, name in found[:3]) or "-"

    columns = ["rank", "kernel", "% of kernel time", "total ms (whole run)", "calls", "avg us per call",
               "profiled launch us", "DRAM GB/s", "DRAM %", "SM throughput %", "tensor pipe %",
               "achieved occupancy %", "theoretical occupancy %", "registers/thread", "grid", "block",
               "top 3 stalls (cycles per issued instruction)"]
    table = []
    for i, k in enumerate(top):
        d = launch_of.get(i, {})
        dur, unit = metric(d, "gpu__time_duration.sum")
        dur_us = None if dur is None else dur * TO_NS.get(unit or "nsecond", 1.0) / 1e3
        bw, unit = metric(d, "dram__bytes.sum.per_second")
        m = re.match(r"^([kmgtp]?)byte/s(econd)?$", (unit or "byte/second").lower())
        bw_gb = None if bw is None or not m else bw * PREFIX[m.group(1)] / 1e9
        if bw_gb is None and dur_us:
            rd, _ = metric(d, "dram__bytes_read.sum")
            wr, _ = metric(d, "dram__bytes_write.sum")
            ru, wu = units.get("dram__bytes_read.sum", "byte"), units.get("dram__bytes_write.sum", "byte")
            to_b = lambda u: PREFIX.get(u.lower()[:1] if u.lower() != "byte" else "", 1.0)
            if rd is not None and wr is not None:
                bw_gb = (rd * to_b(ru) + wr * to_b(wu)) / (dur_us * 1e-6) / 1e9
        tensor = [number(v) for c, v in d.items() if re.search(r"pipe_tensor\w*cycles_active\.avg\.pct_of_peak", c)]
        tensor = [t for t in tensor if t is not None]
        table.append([
            k["rank"], k["kernel"], k["percent"], f"{number(k['total_ns']) / 1e6:.2f}", k["calls"],
            f"{number(k['avg_ns']) / 1e3:.1f}", fmt(dur_us, ".1f"), fmt(bw_gb, ".0f"),
            fmt(metric(d, "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed", "dram__throughput.avg.pct_of_peak_sustained_elapsed")[0], ".1f"),
            fmt(metric(d, "sm__throughput.avg.pct_of_peak_sustained_elapsed")[0], ".1f"),
            fmt(max(tensor) if tensor else None, ".1f"),
            fmt(metric(d, "sm__warps_active.avg.pct_of_peak_sustained_active")[0], ".1f"),
            fmt(metric(d, "sm__maximum_warps_per_active_cycle_pct")[0], ".1f"),
            fmt(metric(d, "launch__registers_per_thread")[0], ".0f"),
            d.get("grid size", "-") or "-", d.get("block size", "-") or "-", stalls(d),
        ])
    with open(sys.argv[5], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(table)
    short = lambda s: s if len(s) <= 100 else s[:60] + "..." + s[-37:]
    print("| " + " | ".join(columns) + " |")
    print("| --- " * len(columns) + "|")
    for row in table:
        row = [short(str(c)).replace("|", "\\|") for c in row]
        print("| " + " | ".join(row) + " |")
    missing = len(top) - len(launch_of)
    if data and missing:
        print(f"\n{missing} of the {len(top)} kernels have no profiled launch in {sys.argv[4]} ('-' columns)")
else:
    sys.exit(f"step_profile_py: unknown mode {mode}")
PY
}

# Kernels of the training step the ncu-step profiles (the largest total times).
STEP_TOP_KERNELS=10

# The ncu-step: the training step's (model-step --steps 1: 2 warm-up steps, 1 timed, 2
# forward+backward passes under the op profiler) kernel times, from nsys (a trace: real clocks,
# little overhead) or, without nsys, ncu timing every launch (gpu__time_duration.sum only); then
# one launch (the second call) of each of the STEP_TOP_KERNELS kernels with the largest total
# time under ncu with SpeedOfLight, Occupancy, LaunchStats and WarpStateStats (stall reasons).
# Logs: ncu-step-kernels.csv (every kernel's total), ncu-step-summary.csv (the top ones with
# their profile), the ncu raw CSV and the reports that fit; the report: the summary table.
ncu_step_profile() {
    local seconds ncu nsys deadline status left regex raw="-" t0=$SECONDS
    local kernels="$logs/ncu-step-kernels.csv" log="$logs/ncu-step.log"
    seconds="$(step_seconds ncu-step "$1")"
    wanted ncu-step || return 0
    {
        echo "## The training step's top $STEP_TOP_KERNELS kernels under Nsight Compute (ncu-step: model-step --steps 1; SpeedOfLight, Occupancy, LaunchStats, WarpStateStats)"
        echo
    } >>"$report"
    ncu="$(find_ncu)"
    nsys="$(find_nsys)"
    if [[ -z "$ncu" && -z "$nsys" ]]; then
        { echo "ncu and nsys not found: no training-step profile"; echo; } >>"$report"
        return 0
    fi
    deadline=$((SECONDS + seconds))
    : >"$log"
    # 1. Every kernel's total time in the run.
    if [[ -n "$nsys" ]]; then
        echo "kernel times: $nsys ($("$nsys" --version 2>/dev/null | tail -1)), a trace of the whole run" >>"$report"
        left=$((deadline - SECONDS - 40))
        status=$(run_logged "$left" "$log" "$nsys" profile --trace=cuda --sample=none --cpuctxsw=none \
            --force-overwrite=true -o "$logs/ncu-step-nsys" "$CARRY/model-step" --steps 1)
        local report_file
        for report_file in "$logs/ncu-step-nsys.nsys-rep" "$logs/ncu-step-nsys.qdrep"; do
            [[ -f "$report_file" ]] || continue
            local r
            for r in cuda_gpu_kern_sum gpukernsum; do
                timeout 60 "$nsys" stats --force-export=true --report "$r" --format csv "$report_file" \
                    >"$logs/ncu-step-nsys-kern.csv" 2>>"$log" && grep -q "Total Time" "$logs/ncu-step-nsys-kern.csv" && break
            done
            rm -f "$logs/ncu-step-nsys.sqlite"
            [[ -n "$(find "$logs" -name "$(basename "$report_file")" -size +16M)" ]] && rm -f "$report_file"
        done
        [[ -s "$logs/ncu-step-nsys-kern.csv" ]] && step_profile_py nsys-kernels "$logs/ncu-step-nsys-kern.csv" "$kernels" >>"$log"
    fi
    if [[ ! -s "$kernels" && -n "$ncu" ]]; then
        echo "kernel times: ${nsys:+no kernel summary from nsys (ncu-step.log says why); }$ncu timing every launch (gpu__time_duration.sum, --clock-control none)" >>"$report"
        left=$((deadline - SECONDS - 40))
        status=$(run_logged "$left" "$log" "$ncu" -f -o "$logs/ncu-step-times" --metrics gpu__time_duration.sum \
            --clock-control none "$CARRY/model-step" --steps 1)
        if [[ -f "$logs/ncu-step-times.ncu-rep" ]]; then
            timeout 60 "$ncu" --import "$logs/ncu-step-times.ncu-rep" --csv --page raw >"$logs/ncu-step-times-raw.csv" 2>>"$log"
            rm -f "$logs/ncu-step-times.ncu-rep"
            step_profile_py ncu-kernels "$logs/ncu-step-times-raw.csv" "$kernels" >>"$log"
        fi
    fi
    echo >>"$report"
    if [[ ! -s "$kernels" ]]; then
        {
            echo "(no kernel times: exit status ${status:-?}; tail of ncu-step.log:)"
            echo '```'
            tail -8 "$log"
            echo '```'
            echo "(ncu-step: $((SECONDS - t0)) s of its ${seconds} s timeout)"
            echo
        } >>"$report"
        return 0
    fi
    # 2. One launch of each top kernel under the sections.
    if [[ -z "$ncu" ]]; then
        echo "ncu not found: kernel times only, no sections" >>"$report"
    elif ((deadline - SECONDS < 30)); then
        echo "not profiled with ncu: the step's ${seconds} s ran out after the kernel times" >>"$report"
    else
        regex="$(step_profile_py regex "$kernels" "$STEP_TOP_KERNELS")"
        echo "sections: $ncu ($("$ncu" --version 2>/dev/null | tail -1)), the 2nd call of each kernel function matching \`$regex\`, base clocks" >>"$report"
        status=$(run_logged "$((deadline - SECONDS))" "$log" "$ncu" -f -o "$logs/ncu-step" \
            --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
            --metrics dram__bytes.sum.per_second,dram__bytes_read.sum,dram__bytes_write.sum \
            --kernel-id "::regex:$regex:2" --launch-count $((2 * STEP_TOP_KERNELS)) \
            "$CARRY/model-step" --steps 1)
        if [[ -f "$logs/ncu-step.ncu-rep" ]]; then
            timeout 60 "$ncu" --import "$logs/ncu-step.ncu-rep" --csv --page raw >"$logs/ncu-step-raw.csv" 2>>"$log"
            [[ -s "$logs/ncu-step-raw.csv" ]] && raw="$logs/ncu-step-raw.csv"
            [[ -n "$(find "$logs" -name ncu-step.ncu-rep -size +16M)" ]] && rm -f "$logs/ncu-step.ncu-rep"
        fi
        [[ "$status" == 0 && "$raw" != - ]] || {
            echo
            echo "(ncu exit status $status; tail of ncu-step.log:)"
            echo '```'
            tail -8 "$log"
            echo '```'
        } >>"$report"
    fi
    {
        echo
        echo "Totals and calls are over the whole run (3 steps and 2 forward+backward passes); a profiled"
        echo "launch's columns are from ncu (base clocks). Stalls: ncu's warp-state cycles per issued instruction."
        echo
        step_profile_py summary "$kernels" "$STEP_TOP_KERNELS" "$raw" "$logs/ncu-step-summary.csv"
        echo
        echo "(ncu-step: $((SECONDS - t0)) s of its ${seconds} s timeout; CSV: ncu-step-summary.csv, ncu-step-kernels.csv in the logs)"
        echo
    } >>"$report"
}

run_checks() {
    local out_dir="${1:-bench/results}"
    [[ -x "$CARRY/gpu-tests" && -x "$CARRY/nccl-test" && -x "$CARRY/device-fsdp-test" && -x "$CARRY/bench" && -x "$CARRY/model-step" && -x "$CARRY/train" && -d "$CARRY/hf" ]] || {
        echo "gpu_check run: $CARRY/{gpu-tests,nccl-test,device-fsdp-test,bench,model-step,train,hf} incomplete: run 'tools/gpu_check.sh build' here first" >&2
        exit 1
    }
    mkdir -p "$out_dir"
    local gpu_name driver slug date_tag report
    gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
    driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)"
    slug="$(tr -c 'A-Za-z0-9\n' '-' <<<"${gpu_name:-unknown}" | tr -s '-' | sed 's/-$//')"
    date_tag="$(date -u +%Y-%m-%d-%H%M)"
    report="$out_dir/$date_tag-$slug.md"
    logs="$out_dir/$date_tag-$slug-logs"
    mkdir -p "$logs"

    local cublaslt_dir
    cublaslt_dir="$(find_cublaslt_dir)"
    [[ -n "$cublaslt_dir" ]] && export LD_LIBRARY_PATH="$cublaslt_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    local nccl_dir
    nccl_dir="$(find_nccl_dir)"
    [[ -n "$nccl_dir" ]] && export LD_LIBRARY_PATH="$nccl_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

    {
        echo "# GPU check $date_tag"
        echo
        echo "- device: ${gpu_name:-unknown (nvidia-smi failed)}"
        echo "- driver: ${driver:-unknown}"
        echo "- commit: $(tr '\n' ' ' <"$CARRY/COMMIT")"
        echo "- command: ${KORMO_GPU_STEPS:+KORMO_GPU_STEPS=\"$KORMO_GPU_STEPS\" }tools/gpu_check.sh run $out_dir (budget ${BUDGET_S} s)"
        echo "- glibc: $(ldd --version 2>/dev/null | head -1)"
        echo "- cuBLASLt (CudaOps GEMMs): ${cublaslt_dir:-NOT FOUND: the cuda_ops_* tests will fail}"
        echo "- NCCL: ${nccl_dir:-NOT FOUND: the NCCL world-size-1 check will fail}"
        echo
    } >"$report"

    # Phase 1, correctness, all at once (timings mean nothing here): every GPU test in its own
    # process, NCCL at world size 1, and the transformers comparison (CPU).
    local tests t flavor
    tests="$("$CARRY/gpu-tests" --list 2>/dev/null | sed -n 's/: test$//p')"
    if wanted tests; then
        for t in $tests; do
            start_logged "test-$t" 120 "$CARRY/gpu-tests" --exact "$t" --nocapture --test-threads=1
        done
    fi
    wanted nccl && start_logged nccl 90 "$CARRY/nccl-test" --nocapture --test-threads=1
    wanted device-fsdp && start_logged device-fsdp 120 "$CARRY/device-fsdp-test" --nocapture --test-threads=1
    if wanted transformers; then
        for flavor in llama kormo; do
            start_logged "transformers-$flavor" 120 python3 tools/hf_transformers_check.py \
                "$CARRY/hf/$flavor" "$CARRY/hf/$flavor-logits.json"
        done
    fi
    # timeout runs programs, not functions: the function travels in the environment.
    export -f train_smoke train_deterministic
    export CARRY
    wanted train-smoke && start_logged train-smoke 150 bash -c 'train_smoke "$1"' _ "$logs/train-smoke"
    wanted train-deterministic && start_logged train-deterministic 150 bash -c 'train_deterministic "$1"' _ "$logs/train-deterministic"
    wanted train-launch && start_logged train-launch 150 tools/gpu_train_launch_check.sh "$CARRY/train" "$logs/train-launch"
    wait

    local status result maxerr
    if wanted tests; then
        {
            echo "## GPU tests (tests/gpu.rs, one process per test, run concurrently; cuda_ops_* = the model on CudaOps vs CpuOps)"
            echo
            echo "| test | result | max relative L2 error |"
            echo "| --- | --- | --- |"
        } >>"$report"
        for t in $tests; do
            status="$(status_of "test-$t")"
            maxerr="$(grep -o 'relative L2 error [0-9.e+-]*' "$logs/test-$t.log" | awk '{print $4}' | sort -g | tail -1)"
            case "$status" in
                0) grep -q "skipped: no CUDA device" "$logs/test-$t.log" && result="SKIPPED (no device)" || result="pass" ;;
                124) result="TIMEOUT" ;;
                *) result="FAIL (exit $status)" ;;
            esac
            echo "| $t | $result | ${maxerr:--} |" >>"$report"
        done
        {
            echo
            echo "Failure messages (if any):"
            echo '```'
            grep -h -B2 -A6 "panicked at" "$logs"/test-*.log | head -120
            echo '```'
            echo
        } >>"$report"
    fi
    if wanted nccl; then
        {
            echo "## NCCL at world size 1 (rust/dist/tests/nccl_device.rs: every collective vs the CPU communicator)"
            echo
            echo '```'
            grep -E "^test |test result|skipped|panicked|Error|error" "$logs/nccl.log" | head -40
            echo '```'
            status="$(status_of nccl)"
            [[ "$status" == 0 ]] || echo "(nccl-test exit status $status)"
            echo
        } >>"$report"
    fi
    if wanted device-fsdp; then
        {
            echo "## Device FSDP at world size 1 (rust/dist/tests/device_fsdp.rs: DeviceFsdpRank over NCCL vs the single-GPU step and FsdpRank<CudaOps> over the CPU communicator)"
            echo
            echo '```'
            grep -E "^test |test result|^case |^  [A-Za-z].*:$|step 5:|masters:|allocations per step|FAILURES|panicked|skipped" "$logs/device-fsdp.log" | head -80
            echo '```'
            status="$(status_of device-fsdp)"
            [[ "$status" == 0 ]] || echo "(device-fsdp-test exit status $status)"
            echo
        } >>"$report"
    fi
    if wanted transformers; then
        {
            echo "## Hugging Face export vs transformers (tools/hf_transformers_check.py, tiny model, f32)"
            echo
            echo '```'
            for flavor in llama kormo; do
                cat "$logs/transformers-$flavor.log"
                status="$(status_of "transformers-$flavor")"
                [[ "$status" == 0 ]] || echo "($flavor: exit status $status)"
            done
            echo '```'
            echo
        } >>"$report"
    fi

    report_run train-smoke "A real training run (tiny recipe at head dim 64: CUDA 60 steps, stopped at 30 and resumed, vs CPU)" \
        "^|\|^final step"
    report_run train-deterministic "Deterministic mode: CUDA stop at 30 + resume vs 60 uninterrupted steps, bitwise ([stability] deterministic = true)" \
        "^|\|^deterministic"
    report_run train-launch "train as a launched rank at world size 1 (DeviceFsdpRank + NCCL in the trainer) vs plain --backend=cuda, and stopped at 5 + resumed (tools/gpu_train_launch_check.sh)" \
        "^|\|^largest\|^FAIL\|^PASS\|skipped"

    # Phase 2, timings, one at a time on an otherwise idle device.
    timed_step model-step "Training step (model-step: proxy-1b, seq 4096, CudaOps + DeviceAdamW)" 120 raw \
        "$CARRY/model-step"
    timed_step model-step-deterministic "Training step in deterministic mode ([stability] deterministic: no order-dependent float sums; compare with the row above)" 120 raw \
        "$CARRY/model-step" --deterministic
    # The recipe's real shape (micro-batch 4 x seq 4096), the trainer's own model/optimizer
    # calls; the JSON result lands beside the logs.
    timed_step train-benchmark "Trainer benchmark (train --config=proxy-1b --stage=pretrain1 --backend=cuda --benchmark)" 120 fenced \
        "$CARRY/train" --config=proxy-1b --stage=pretrain1 --backend=cuda --benchmark --benchmark-warmup=1 \
        --benchmark-steps=3 --benchmark-out="$logs/train-benchmark.json" --run-dir="$logs/train-run"
    timed_step torch-model "PyTorch reference of the same step (bench/torch_model_reference.py: proxy-1b, 4 x 4096, eager and torch.compile)" 150 table \
        python3 bench/torch_model_reference.py --steps 3 --warmup 1 \
        --accounting "$("$CARRY/model-step" --model proxy-1b --seq 4096 --flops-per-token)" \
        --profile-csv "$logs/torch-compile-profile.csv"
    wanted torch-model && torch_profile_table "$logs/torch-compile-profile.csv" >>"$report"
    timed_step bench "Rust kernel benchmarks (rust/cuda/src/bin/bench.rs)" 120 raw "$CARRY/bench"
    timed_step torch "PyTorch reference timings, non-attention rows (bench/torch_reference.py --quick --no-attention)" 60 table \
        python3 bench/torch_reference.py --quick --no-attention
    # Before torch-attention, the step most likely to run to its timeout (a flex_attention
    # compile per shape; its finished rows are reported even then), so the profiles get their time.
    ncu_step 90
    ncu_step_profile 120
    timed_step torch-attention "PyTorch reference timings, attention rows (bench/torch_reference.py --quick --attention-only)" 120 table \
        python3 bench/torch_reference.py --quick --attention-only

    # Phase 3, compute-sanitizer: memcheck and racecheck side by side with what time is left.
    if wanted sanitizer; then
        echo "## compute-sanitizer" >>"$report"
        echo >>"$report"
        local sanitizer tool summary
        sanitizer="$(find_sanitizer)"
        if [[ -z "$sanitizer" ]]; then
            echo "compute-sanitizer not found on this machine: memcheck/racecheck NOT run." >>"$report"
        else
            for tool in memcheck racecheck; do
                start_logged "sanitizer-$tool" 300 "$sanitizer" --tool "$tool" --error-exitcode 99 \
                    "$CARRY/gpu-tests" --test-threads=1 --skip cuda_ops_loss_curve
            done
            wait
            echo "| tool | exit | errors reported |" >>"$report"
            echo "| --- | --- | --- |" >>"$report"
            for tool in memcheck racecheck; do
                status="$(status_of "sanitizer-$tool")"
                summary="$(grep -h "ERROR SUMMARY\|RACECHECK SUMMARY\|^test .* \.\.\. \|test result" "$logs/sanitizer-$tool.log" | sort | uniq -c | tr '\n' ';')"
                [[ "$status" == 124 ]] && summary="TIMEOUT (partial: $summary)"
                echo "| $tool | $status | ${summary:-none printed} |" >>"$report"
            done
        fi
    fi

    echo "(whole run: ${SECONDS} s of the ${BUDGET_S} s budget)" >>"$report"

    # The device tool returns at most 8 files: the logs travel as one archive.
    tar -czf "$logs.tar.gz" -C "$(dirname "$logs")" "$(basename "$logs")" && rm -rf "$logs"
    echo "report: $report (logs: $logs.tar.gz)"
    cat "$report"
}

case "${1:-}" in
    build) build ;;
    run) run_checks "${2:-}" ;;
    *)
        echo "usage: tools/gpu_check.sh build | run [OUT_DIR]" >&2
        exit 2
        ;;
esac
