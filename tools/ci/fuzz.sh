#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time with cargo fuzz (libFuzzer + AddressSanitizer,
# on the nightly toolchain that rustup provides), starting from the committed seeds in
# fuzz/corpus/<target>/. A crash, a leak, an out-of-memory or a slow input fails the run and
# leaves the input in fuzz/artifacts/<target>/: fix it and add it to the target's corpus as a
# regression input.
#
#   tools/ci/fuzz.sh [SECONDS_PER_TARGET (default 60)] [CACHE_DIR (default .ci-cache)]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-60}
cache=${2:-.ci-cache}

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
  exit 1
fi
if [ ! -x "$cache/cargo-fuzz/bin/cargo-fuzz" ]; then
  cargo install --quiet --locked --root "$cache/cargo-fuzz" cargo-fuzz --version 0.13.2
fi
export PATH="$PWD/$cache/cargo-fuzz/bin:$PATH"

cd fuzz
for target in $(cargo +nightly fuzz list); do
  # New inputs go to a scratch copy; the committed seeds stay as they are.
  scratch=$(mktemp -d)
  cargo +nightly fuzz run "$target" "$scratch" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len=262144 -print_final_stats=1
  rm -rf "$scratch"
done
