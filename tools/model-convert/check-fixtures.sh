#!/usr/bin/env bash
# Regenerates the fixture models with the converter and checks they are byte-identical to the
# committed ones (the converter is deterministic, and the fixtures are what it makes).
# Usage: tools/model-convert/check-fixtures.sh VENV_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${1:?usage: check-fixtures.sh VENV_DIR}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet -r "$here/requirements-test.txt"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$here/make-fixtures.sh" "$out" "$venv/bin/python" 2>/dev/null
status=0
for model in fixture-chat fixture-embed; do
  for file in model.onnx tokenizer.json manifest.json; do
    if ! cmp -s "$out/$model/$file" "$here/../../tests/fixtures/models/$model/$file"; then
      echo "fixture $model/$file differs from what the converter makes now" >&2
      status=1
    fi
  done
done
[ $status -eq 0 ] && echo "fixtures: byte-identical to the converter's output"
exit $status
