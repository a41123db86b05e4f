#!/bin/bash
# The documented real-corpus run of docs/data-prep.md ("A real bilingual corpus, end to end"):
# Debian's English and Korean LibreOffice help (HTML) -> kormo-tokenizer train -> prepare ->
# train (the tiny model, 300 steps) -> hf export -> transformers. Needs network access to Debian's
# archive (apt-get download) and, for the last step, a Python with torch and transformers
# (PYTHON, default python3).
#
#   tools/real_corpus_run.sh BIN_DIR WORK_DIR
#
# BIN_DIR holds the built kormo-tokenizer, prepare, train and hf binaries (target/release after
# `cargo build --release -p kormo-tokenizer -p kormo-prep -p kormo-train -p kormo-hf --bins`;
# timings are only meaningful from a release build).
set -euo pipefail
bin="$(cd "$1" && pwd)"
repo="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$2"
cd "$2"
python="${PYTHON:-python3}"
timed() { local name="$1"; shift; /usr/bin/time -f "$name: %e s wall, %M KB peak" "$@"; }

# 1. The packages (4:7.4.7-1+deb12u14 when this was written), every 10th page held out.
apt-get download libreoffice-help-en-us libreoffice-help-ko
rm -rf x split && for deb in libreoffice-help-*.deb; do dpkg-deb -x "$deb" x; done
for lang in en-US ko; do
    l="${lang%%-*}"
    mkdir -p "split/$l/train" "split/$l/held"
    i=0
    while read -r f; do
        i=$((i + 1))
        name="$(md5sum <<<"$f" | cut -c1-8).html"
        if ((i % 10 == 0)); then cp "$f" "split/$l/held/$name"; else cp "$f" "split/$l/train/$name"; fi
    done < <(find "x/usr/share/libreoffice/help/$lang" -name '*.html' | sort)
done

# 2. Tokenizer, 3. shards (default filters and dedup; the held-out pages as their own sources).
timed tokenizer "$bin/kormo-tokenizer" train --source en=1.0:split/en/train --source ko=1.0:split/ko/train \
    --out tok --vocab-size 16384 --threads 2
rm -rf prepared
timed prepare "$bin/prepare" run --source en=split/en/train --source ko=split/ko/train \
    --source en_held=split/en/held --source ko_held=split/ko/held \
    --tokenizer tok/tokenizer.json --out prepared --threads 2 2>prepare.log

# 4. The tiny recipe on these shards: BPE tokens, half English, half Korean, 300 steps, eval.
sed -e 's/^name = "tiny"/name = "libreoffice-help"/' \
    -e 's#^vocabulary = "bytes"#vocabulary = "bpe"\ntokenizer = "tok/tokenizer.json"#' \
    -e 's#^\[sources.web\]#[sources.en]\npath = "prepared/en/manifest.json"\n\n[sources.ko]\npath = "prepared/ko/manifest.json"\n\n[sources.web]#' \
    -e '0,/^mixture = { web = 1.0 }/s//mixture = { en = 0.5, ko = 0.5 }/' \
    -e '0,/^steps = 150/s//steps = 300/' \
    -e 's/^\[checkpoint\]/[eval]\nevery_steps = 100\nholdout_documents = 20\nrows = 16\n\n[checkpoint]/' \
    "$repo/configs/tiny.toml" >recipe.toml
rm -rf run
timed train "$bin/train" --config=recipe.toml --stage=pretrain1 --run-dir=run --log-every=50

# 5. Export, and the same logits from transformers.
rm -rf hfout
timed export "$bin/hf" export --model run/pretrain1/final --out hfout --flavor llama --dtype f32 --preset tiny
ids="$("$python" -c 'import sys; from tokenizers import Tokenizer; t = Tokenizer.from_file("hfout/tokenizer.json"); print(",".join(map(str, t.encode(sys.argv[1]).ids)))' \
    "<|BOS|>서식 도구 모음에서 굵게 아이콘을 누르십시오. Choose Format - Character to open the dialog.")"
"$bin/hf" logits --model hfout --tokens "$ids" --out logits.json
"$python" "$repo/tools/hf_transformers_check.py" hfout logits.json
