#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for MINUTES each, one after the
# other, and prints a summary line per target. Needs a nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz`). Not part of CI.
#
#   fuzz/run.sh 10                       # every target, 10 minutes each
#   fuzz/run.sh 2 manifest sql_lockdown  # two targets, 2 minutes each
#
# Corpora grow in fuzz/corpus/<target> (seeded from fuzz/seeds/<target>);
# a crash or failed check is saved in fuzz/artifacts/<target>/ and stops that
# target. Build artifacts go to $FUZZ_TARGET_DIR (default
# ~/.cache/sluice/fuzz-target): the first build compiles DuckDB (~30 min).
# SANITIZER defaults to none: the code under test is safe Rust, and DuckDB's
# C++ is not instrumented by cargo-fuzz either way.
set -euo pipefail
cd "$(dirname "$0")"

minutes=${1:?usage: fuzz/run.sh MINUTES [TARGET...]}
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
target_dir=${FUZZ_TARGET_DIR:-$HOME/.cache/sluice/fuzz-target}
sanitizer=${SANITIZER:-none}
declare -A dict=([manifest]=dict/manifest.dict [sql_lockdown]=dict/sql.dict)

cargo +nightly fuzz build --sanitizer "$sanitizer" --target-dir "$target_dir"
mkdir -p logs
status=0
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "seeds/$target"
    args=(-max_total_time=$((minutes * 60)) -timeout=20 -rss_limit_mb=4096 -print_final_stats=1)
    if [ -n "${dict[$target]:-}" ]; then
        args+=(-dict="${dict[$target]}")
    fi
    log="logs/$target.log"
    echo "== $target: $minutes min"
    if cargo +nightly fuzz run --sanitizer "$sanitizer" --target-dir "$target_dir" \
        "$target" "corpus/$target" "seeds/$target" -- "${args[@]}" >"$log" 2>&1; then
        result=ok
    else
        result="FAILED (see $log and artifacts/$target/)"
        status=1
    fi
    execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo '?')
    corpus=$(find "corpus/$target" -type f | wc -l)
    echo "   $result: $execs runs, coverage $cov edges, corpus $corpus inputs"
done
exit $status
