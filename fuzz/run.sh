#!/bin/sh
# Runs the fuzz targets in short bursts, one at a time: `fuzz/run.sh [TARGET] [SECONDS]`
# (every target when TARGET is omitted or `all`; 60 s each by default). Needs the nightly
# toolchain (`cargo xtask setup`) and `cargo install cargo-fuzz`. Builds into fuzz/target;
# finds land in fuzz/artifacts/TARGET. CI does not run this: the property tests in
# sandbox-user (`cargo xtask test`) check the same properties on generated inputs.
set -eu
cd "$(dirname "$0")"
target=${1:-all}
seconds=${2:-60}
if [ "$target" = all ]; then
    targets=$(cargo +nightly fuzz list)
else
    targets=$target
fi
for t in $targets; do
    mkdir -p "corpus/$t"
    echo "== $t ($seconds s)"
    cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$seconds" -print_final_stats=1
done
