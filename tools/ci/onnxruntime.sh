#!/usr/bin/env bash
# Puts ONNX Runtime's shared library (from the PyPI wheel) into DIR; does nothing if present.
# Usage: tools/ci/onnxruntime.sh DIR
set -euo pipefail
dir=${1:?usage: onnxruntime.sh DIR}
version=1.31.1
lib="$dir/libonnxruntime.so.$version"
[ -f "$lib" ] && exit 0
mkdir -p "$dir/wheels"
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$dir/wheels" "onnxruntime==$version"
python3 - "$dir" "$version" <<'PY'
import glob, sys, zipfile
dir, version = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{dir}/wheels/onnxruntime-{version}-*.whl")[0]
name = f"onnxruntime/capi/libonnxruntime.so.{version}"
with zipfile.ZipFile(wheel) as z, open(f"{dir}/libonnxruntime.so.{version}", "wb") as out:
    out.write(z.read(name))
PY
echo "ONNX Runtime $version: $lib"
