#!/usr/bin/env python3
"""Compares kormo's `prepare dedup` with DCLM's bff (`--remove-type old-both`), paragraph by
paragraph, on the same JSONL input (Python stdlib only).

  bff_compare.py ids IN.jsonl OUT.jsonl
      copies IN's "text" fields into OUT as {"id": i, "text": ...} (bff keeps "id", so its
      output can be matched to the input after it drops emptied documents)
  bff_compare.py compare --kormo-decisions D.jsonl --kormo-kept K.jsonl
                         --bff-annotated A.jsonl --bff-output B.jsonl [--show N]
      D, K: `prepare dedup` over OUT (NAME.decisions.jsonl, NAME.jsonl); A: bff run with
      --annotate (its bff_duplicate_spans: the paragraphs its paragraph rule removed); B: bff
      run without it (documents missing there were emptied or left blank). Prints, as JSON:
      the paragraph removals of each tool, the share of each one's removals the other also
      made, the same for documents left out, and how many documents both keep with identical
      text; then the first N disagreements.
"""

import argparse
import json
import sys


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def cmd_ids(args):
    with open(args.inp, encoding="utf-8") as f, open(args.out, "w", encoding="utf-8") as out:
        for i, line in enumerate(f):
            out.write(json.dumps({"id": i, "text": json.loads(line)["text"]}, ensure_ascii=False) + "\n")


def share(part, whole):
    return round(part / whole, 6) if whole else None


def cmd_compare(args):
    decisions = read_jsonl(args.kormo_decisions)
    kormo_kept_texts = [d["text"] for d in read_jsonl(args.kormo_kept)]
    kormo_kept_ids = [d["doc"] for d in decisions if d["kept"]]
    if len(kormo_kept_ids) != len(kormo_kept_texts):
        sys.exit("kormo: kept text and decisions disagree on the kept documents")
    kormo_text = dict(zip(kormo_kept_ids, kormo_kept_texts))
    kormo = {(d["doc"], s, e) for d in decisions for s, e in d["removed_spans"]}
    annotated = read_jsonl(args.bff_annotated)
    bff = {(d["id"], s, e) for d in annotated for s, e in d["bff_duplicate_spans"]}
    bff_text = {d["id"]: d["text"] for d in read_jsonl(args.bff_output) if d["text"].strip()}
    docs = {d["doc"] for d in decisions}
    kormo_dropped = {i for i in docs if i not in kormo_text}
    bff_dropped = {i for i in docs if i not in bff_text}
    both_kept = [i for i in sorted(docs) if i in kormo_text and i in bff_text]
    same_text = sum(kormo_text[i] == bff_text[i] for i in both_kept)
    report = {
        "documents": len(docs),
        "paragraphs": sum(d["paragraphs"] for d in decisions),
        "paragraphs_removed": {"kormo": len(kormo), "bff": len(bff), "both": len(kormo & bff)},
        "kormo_removals_bff_also_removes": share(len(kormo & bff), len(kormo)),
        "bff_removals_kormo_also_removes": share(len(kormo & bff), len(bff)),
        "documents_dropped": {"kormo": len(kormo_dropped), "bff": len(bff_dropped),
                              "both": len(kormo_dropped & bff_dropped)},
        "kormo_drops_bff_also_drops": share(len(kormo_dropped & bff_dropped), len(kormo_dropped)),
        "bff_drops_kormo_also_drops": share(len(kormo_dropped & bff_dropped), len(bff_dropped)),
        "documents_both_keep": len(both_kept),
        "documents_both_keep_identical_text": same_text,
    }
    print(json.dumps(report, indent=2))
    text = {d["id"]: d["text"] for d in annotated}
    for name, only in (("kormo only", kormo - bff), ("bff only", bff - kormo)):
        for doc, s, e in sorted(only)[: args.show]:
            para = text[doc].encode("utf-8")[s:e].decode("utf-8", "replace")
            print(f"{name}: doc {doc} bytes {s}..{e}: {para!r}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    ids = sub.add_parser("ids")
    ids.add_argument("inp")
    ids.add_argument("out")
    c = sub.add_parser("compare")
    c.add_argument("--kormo-decisions", required=True)
    c.add_argument("--kormo-kept", required=True)
    c.add_argument("--bff-annotated", required=True)
    c.add_argument("--bff-output", required=True)
    c.add_argument("--show", type=int, default=5)
    args = p.parse_args()
    {"ids": cmd_ids, "compare": cmd_compare}[args.cmd](args)


if __name__ == "__main__":
    main()
