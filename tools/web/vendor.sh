#!/usr/bin/env bash
# The web app's one third-party module, markdown-it (renders Bee's markdown; raw HTML off, so
# it escapes whatever HTML a message holds, and it refuses javascript: links). This fetches
# the pinned version from the npm registry and checks it is the committed, reviewed file:
#   tools/web/vendor.sh          refresh web/vendor/ from npm (after changing VERSION and SHA256)
#   tools/web/vendor.sh --check  only check the committed copy (CI)
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=15.0.3
SHA256=d5432491790141da046b1197353705db03264f40b5727f3b4b591f5aba193e30
target=web/vendor/markdown-it.esm.min.js

if [ "${1:-}" = "--check" ]; then
  echo "$SHA256  $target" | sha256sum --quiet -c -
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "markdown-it@$VERSION" >/dev/null && tar xzf "markdown-it-$VERSION.tgz")
echo "$SHA256  $tmp/package/dist/browser/markdown-it.esm.min.mjs" | sha256sum --quiet -c -
cp "$tmp/package/dist/browser/markdown-it.esm.min.mjs" "$target"
cp "$tmp/package/LICENSE" web/vendor/markdown-it.LICENSE
echo "web/vendor: markdown-it $VERSION"
