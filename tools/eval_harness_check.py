#!/usr/bin/env python3
"""Checks kormo's `eval` against lm-evaluation-harness on the same Hugging Face folder and tasks.

    tools/eval_harness_check.py --model EXPORT_DIR --eval EVAL_BIN --tasks A.json,B.json \
        [--record OUT.json] [--ll-atol 1e-4] [--work DIR]

EXPORT_DIR is a Hugging Face Llama folder (config.json, model.safetensors, tokenizer.json and
tokenizer_config.json), e.g. the one rust/eval/tests/harness_agreement.rs exports:

    KORMO_HARNESS_EXPORT=/tmp/harness-model cargo test -p kormo-eval --test harness_agreement -- --ignored export

EVAL_BIN is kormo's cargo-built `eval` binary; the task files are kormo task files (docs/eval.md)
with plain text fields (no chat tasks). The script needs torch, transformers and lm_eval
(lm-evaluation-harness) with its Hugging Face extra; it runs on the CPU and reaches no network:

    python3 -m venv /tmp/harness-venv
    /tmp/harness-venv/bin/pip install torch transformers "lm_eval[hf]==0.4.13"

For every task it

* writes the equivalent harness task YAML into the work folder (`dataset_path: json` on the same
  JSONL files, kormo's field names are the harness's: doc_to_text, doc_to_target, doc_to_choice,
  target_delimiter, fewshot_delimiter, description, num_fewshot, fewshot_split, generation_kwargs
  (greedy); kormo's exact_match compares the trimmed output, which is the harness's
  `remove_whitespace` filter before exact_match;
  a template that is just `{{field}}` becomes the bare field name, as harness YAMLs write it, so
  a boolean label indexes the choices as in BoolQ),
* runs the harness's Hugging Face backend, `HFLM(pretrained=EXPORT_DIR, dtype=float32,
  device=cpu, batch_size=1, add_bos_token=True)` through `simple_evaluate` with the task's
  `fewshot_seed` as `fewshot_random_seed` and `log_samples=True`,
* runs `EVAL_BIN --model EXPORT_DIR --tasks ...` and reads its results.json,
* compares per document: the context text (few-shot examples, delimiters), each choice's
  log-likelihood (|kormo - harness| <= --ll-atol), acc and acc_norm, the greedy generation (the
  harness's unfiltered response, cut at the stop strings) and exact_match; and per task the
  scores (exact).

Prints one line per task (max |LL difference|, scores harness vs kormo) and exits 1 on any
disagreement. With --record, writes the harness's per-document values, scores, the folder's
CRC-32s and the package versions to OUT.json (rust/eval/tests/data/harness/harness_values.json
is such a record; the Rust test compares kormo_eval to it without Python).
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import zlib

FIELD = re.compile(r"^\{\{\s*(\w+)\s*\}\}$")


def field_or_template(template):
    """`{{label}}` -> `label` (the harness then takes the document's value as it is)."""
    m = FIELD.match(template)
    return m.group(1) if m else template


def harness_config(spec, task_path):
    base = os.path.dirname(os.path.abspath(task_path))
    files = {"test": os.path.join(base, spec["test_split"])}
    if spec.get("fewshot_split"):
        files["train"] = os.path.join(base, spec["fewshot_split"])
    if spec.get("chat"):
        raise SystemExit(f"{task_path}: chat tasks are not compared (the harness's chat templating differs in kind)")
    cfg = {
        "task": spec["task"],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files},
        "test_split": "test",
        # kormo draws shots from the test split when no few-shot split is named (dropping the question).
        "fewshot_split": "train" if spec.get("fewshot_split") else "test",
        "fewshot_config": {"sampler": "default"},
        "output_type": spec["output_type"],
        "doc_to_text": spec["doc_to_text"],
        "doc_to_target": field_or_template(spec["doc_to_target"]),
        "target_delimiter": spec.get("target_delimiter", " "),
        "fewshot_delimiter": spec.get("fewshot_delimiter", "\n\n"),
        "description": spec.get("description", ""),
        "num_fewshot": spec.get("num_fewshot", 0),
    }
    if spec["output_type"] == "multiple_choice":
        # A list of templates, or the name of a field holding the list: the harness reads both.
        cfg["doc_to_choice"] = spec["doc_to_choice"]
        cfg["metric_list"] = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")]
    else:
        cfg["generation_kwargs"] = {"until": spec.get("until") or ["\n\n"], "max_gen_toks": spec.get("max_gen_toks") or 256, "do_sample": False}
        cfg["metric_list"] = [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]
        # kormo compares the trimmed output: the harness's remove_whitespace filter (str.strip).
        cfg["filter_list"] = [{"name": "strip", "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}]
    return cfg


def run_harness(model_dir, specs, yaml_dir):
    import yaml
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    for path, spec in specs:
        with open(os.path.join(yaml_dir, spec["task"] + ".yaml"), "w") as f:
            yaml.safe_dump(harness_config(spec, path), f, allow_unicode=True, sort_keys=False)
    lm = HFLM(pretrained=model_dir, backend="causal", dtype="float32", device="cpu", batch_size=1, add_bos_token=True)
    try:
        tm = TaskManager(include_path=yaml_dir, include_defaults=False)
    except TypeError:
        tm = TaskManager(include_path=yaml_dir)
    out = {}
    for path, spec in specs:
        res = simple_evaluate(
            model=lm,
            tasks=[spec["task"]],
            task_manager=tm,
            log_samples=True,
            fewshot_random_seed=spec.get("fewshot_seed", 1234),
            limit=spec.get("limit"),
            bootstrap_iters=0,
        )
        samples = sorted(res["samples"][spec["task"]], key=lambda s: s["doc_id"])
        metrics = res["results"][spec["task"]]
        examples = []
        for s in samples:
            context = s["arguments"][0][0]
            if spec["output_type"] == "multiple_choice":
                lls = [float(r[0]) for r in s["filtered_resps"]]
                examples.append({"context": context, "loglikelihoods": lls, "acc": float(s["acc"]), "acc_norm": float(s["acc_norm"])})
            else:
                examples.append({"context": context, "generated": s["resps"][0][0], "exact_match": float(s["exact_match"])})
        names = ("acc", "acc_norm") if spec["output_type"] == "multiple_choice" else ("exact_match",)
        scores = {m: float(next(v for key, v in metrics.items() if key.split(",")[0] == m)) for m in names}
        out[spec["task"]] = {"examples": examples, "scores": scores}
    return out


def run_kormo(eval_bin, model_dir, paths, out_dir):
    cmd = [eval_bin, "--model", model_dir, "--tasks", ",".join(paths), "--out", out_dir, "--threads", "2"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(out_dir, "results.json")) as f:
        results = json.load(f)
    return {t["task"]: {"examples": t["examples"], "scores": {m: v["score"] for m, v in t["metrics"].items()}} for t in results["tasks"]}


def versions():
    import datasets
    import lm_eval
    import numpy
    import tokenizers
    import torch
    import transformers
    from importlib.metadata import version

    return {
        "lm_eval": version("lm_eval"),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
        "datasets": datasets.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def crc32(path):
    with open(path, "rb") as f:
        return f"{zlib.crc32(f.read()):08x}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Hugging Face folder (LlamaForCausalLM, float32)")
    parser.add_argument("--eval", required=True, help="kormo's eval binary")
    parser.add_argument("--tasks", required=True, help="kormo task files, comma-separated")
    parser.add_argument("--record", help="write the harness's values here (JSON)")
    parser.add_argument("--ll-atol", type=float, default=1e-4)
    parser.add_argument("--work", help="work folder [default: a temporary one]")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    model_dir = os.path.abspath(args.model)
    paths = [os.path.abspath(p) for p in args.tasks.split(",")]
    specs = []
    for p in paths:
        with open(p) as f:
            specs.append((p, json.load(f)))
    work = args.work or tempfile.mkdtemp(prefix="kormo-harness-check-")
    yaml_dir = os.path.join(work, "harness_tasks")
    os.makedirs(yaml_dir, exist_ok=True)

    kormo = run_kormo(args.eval, model_dir, paths, os.path.join(work, "kormo"))
    harness = run_harness(model_dir, specs, yaml_dir)
    vers = versions()
    print(" ".join(f"{k} {v}" for k, v in vers.items()))

    ok = True
    rows = []
    for path, spec in specs:
        name = spec["task"]
        h, k = harness[name], kormo[name]
        problems = []
        worst = 0.0
        if len(h["examples"]) != len(k["examples"]):
            problems.append(f"{len(h['examples'])} harness documents, {len(k['examples'])} kormo")
        for i, (he, ke) in enumerate(zip(h["examples"], k["examples"])):
            if he["context"] != ke["context"]:
                problems.append(f"doc {i}: context {ke['context']!r} (kormo) vs {he['context']!r} (harness)")
            if "loglikelihoods" in he:
                if len(he["loglikelihoods"]) != len(ke["loglikelihoods"]):
                    problems.append(f"doc {i}: number of choices")
                for j, (a, b) in enumerate(zip(ke["loglikelihoods"], he["loglikelihoods"])):
                    worst = max(worst, abs(a - b))
                    if abs(a - b) > args.ll_atol:
                        problems.append(f"doc {i} choice {j}: log-likelihood {a} (kormo) vs {b} (harness)")
                for m in ("acc", "acc_norm"):
                    if he[m] != ke[m]:
                        problems.append(f"doc {i}: {m} {ke[m]} (kormo) vs {he[m]} (harness)")
            else:
                if he["generated"] != ke["generated"]:
                    problems.append(f"doc {i}: generated {ke['generated']!r} (kormo) vs {he['generated']!r} (harness)")
                if he["exact_match"] != ke["exact_match"]:
                    problems.append(f"doc {i}: exact_match {ke['exact_match']} (kormo) vs {he['exact_match']} (harness)")
        for m, v in h["scores"].items():
            if abs(v - k["scores"].get(m, float("nan"))) > 1e-12 or m not in k["scores"]:
                problems.append(f"{m}: {k['scores'].get(m)} (kormo) vs {v} (harness)")
        scores = ", ".join(f"{m} {v:.4f} / {k['scores'].get(m, float('nan')):.4f}" for m, v in h["scores"].items())
        ll = f"max |LL diff| {worst:.2e}" if spec["output_type"] == "multiple_choice" else "generation"
        print(f"{'PASS' if not problems else 'FAIL'} {name} ({spec.get('num_fewshot', 0)}-shot, {len(h['examples'])} docs): {ll}; harness / kormo: {scores}")
        for p in problems[:20]:
            print(f"    {p}")
        ok &= not problems
        rows.append({"task": name, "file": os.path.basename(path), "shots": spec.get("num_fewshot", 0), "max_abs_ll_diff": worst,
                     "scores": h["scores"], "kormo_scores": k["scores"], "examples": h["examples"]})

    if args.record:
        record = {
            "about": "lm-evaluation-harness (HFLM, CPU, float32, add_bos_token=True) on the folder rust/eval/tests/harness_agreement.rs exports; written by tools/eval_harness_check.py",
            "versions": vers,
            "ll_atol": args.ll_atol,
            "model": {"model_safetensors_crc32": crc32(os.path.join(model_dir, "model.safetensors")),
                      "tokenizer_json_crc32": crc32(os.path.join(model_dir, "tokenizer.json"))},
            "tasks": rows,
        }
        with open(args.record, "w") as f:
            json.dump(record, f, indent=1, ensure_ascii=False)
            f.write("\n")
        print(f"wrote {args.record}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
