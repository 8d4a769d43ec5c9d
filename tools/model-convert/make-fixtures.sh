#!/usr/bin/env bash
# Writes the test fixture models and their references into DIR (default: tests/fixtures/models).
# Usage: tools/model-convert/make-fixtures.sh [DIR] [PYTHON]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here/../../tests/fixtures/models}
python=${2:-python3}
"$python" "$here/sting_convert.py" fixture-llama "$dir/fixture-chat" --untied
"$python" "$here/sting_convert.py" fixture-bert "$dir/fixture-embed"
"$python" "$here/reference.py" chat "$dir/fixture-chat" "$dir/fixture-chat/reference.json" --max-new 24
"$python" "$here/reference.py" embed "$dir/fixture-embed" "$dir/fixture-embed/reference.json"
