#!/usr/bin/env bash
# Runs every soapcache fuzz target for a while; fails on any crash.
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]      # default: 20 s each, all targets
#
# Installs cargo-fuzz when it is missing. cargo-fuzz needs nightly-only
# rustc flags (-Zsanitizer=address); RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them. When the AddressSanitizer build does not link, the
# targets are built without a sanitizer (-s none) instead.
#
# Seeds are fuzz/corpus/<target>/ (read only); what libFuzzer learns goes
# to fuzz/target/corpus/<target>/ (not committed, reused by the next run).
# A crash leaves its input in fuzz/artifacts/<target>/ and prints the line
# that reproduces it. See fuzz/README.md.
set -euo pipefail

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
all_targets=(envelope splice digest selector policy lifetime)

seconds="${1:-20}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [[ "$seconds" -lt 1 ]]; then
    echo "usage: fuzz/run.sh [SECONDS] [TARGET...]" >&2
    exit 2
fi
[[ $# -gt 0 ]] && shift
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=("${all_targets[@]}")

export RUSTC_BOOTSTRAP=1
# Its own target directory: the fuzz build uses other flags than the main
# crate's, and must not churn the main build's cache.
export CARGO_TARGET_DIR="$fuzz_dir/target"

start=$(date +%s)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version '^0.13'
fi

cd "$fuzz_dir"
# Start from the main crate's lock file, so that the fuzzed code is built
# with the dependency versions the project tests with.
[[ -f Cargo.lock ]] || cp ../Cargo.lock Cargo.lock

sanitizer=address
echo "==> building the fuzz targets (sanitizer: $sanitizer, debug assertions on)"
if ! cargo fuzz build --debug-assertions --sanitizer "$sanitizer"; then
    echo "==> the AddressSanitizer build failed; building without a sanitizer"
    sanitizer=none
    cargo fuzz build --debug-assertions --sanitizer none
fi
built=$(date +%s)

host=$(rustc -vV | sed -n 's/^host: //p')
bin_dir="$CARGO_TARGET_DIR/$host/release"

dict_for() {
    case "$1" in
        envelope | splice | digest) echo "$fuzz_dir/dict/xml.dict" ;;
        selector) echo "$fuzz_dir/dict/xpath.dict" ;;
        policy) echo "$fuzz_dir/dict/toml.dict" ;;
        *) echo "" ;;
    esac
}

failed=()
summary=()
for target in "${targets[@]}"; do
    bin="$bin_dir/$target"
    if [[ ! -x "$bin" ]]; then
        echo "unknown target '$target' (targets: ${all_targets[*]})" >&2
        exit 2
    fi
    work="$CARGO_TARGET_DIR/corpus/$target"
    artifacts="$fuzz_dir/artifacts/$target"
    log="$artifacts/last-run.log"
    mkdir -p "$work" "$artifacts" "$fuzz_dir/corpus/$target"
    args=(
        "$work" "$fuzz_dir/corpus/$target"
        -max_total_time="$seconds"
        # Memory out of proportion to the input fails the run: the whole
        # process, and any single allocation (the targets also meter the
        # heap of each request-path call, fuzz/src/alloc.rs).
        -rss_limit_mb=512
        -malloc_limit_mb=128
        -timeout=10
        -print_final_stats=1
        -artifact_prefix="$artifacts/"
    )
    # A fixed seed (FUZZ_SEED, as CI sets it) makes a run repeatable: CI
    # then explores what was explored before it landed, and a new finding
    # shows up in a developer's longer run rather than failing a landing.
    [[ -n "${FUZZ_SEED:-}" ]] && args+=(-seed="$FUZZ_SEED")
    dict=$(dict_for "$target")
    [[ -n "$dict" ]] && args+=(-dict="$dict")
    echo "==> $target: ${seconds}s"
    t0=$(date +%s)
    if "$bin" "${args[@]}" >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$target")
        echo "---- $target failed (full log: $log):"
        # The failure itself, without libFuzzer's progress lines and the
        # long tail of the backtrace.
        grep -v -E '^#[0-9]+|^INFO: |^\s*$' "$log" |
            awk '/panicked at|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|out-of-memory|timeout/ { p = 1 }
                 p && n < 40 { print; n++ }' || true
        grep -E '^(SUMMARY|MS:|Base64:|artifact_prefix)' "$log" | tail -n 4 || true
        crash=$(grep -o "Test unit written to .*" "$log" | tail -n 1 | sed 's/Test unit written to //' || true)
        if [[ -n "$crash" ]]; then
            echo "---- reproduce with:"
            echo "     $bin $crash"
            echo "     (or: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -a $target $crash)"
        fi
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    summary+=("$(printf '%-9s %-6s %9s runs in %ss' "$target" "$status" "${runs:-?}" "$(($(date +%s) - t0))")")
done

echo "==> fuzzing summary (sanitizer: $sanitizer; build $((built - start))s, total $(($(date +%s) - start))s)"
printf '    %s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzzing found problems in: ${failed[*]}" >&2
    exit 1
fi
