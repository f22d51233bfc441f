#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind, for
#   direct:    the load benchmark's upstream answering directly, and
#   soapcache: soapcache answering every request from its cache,
# both under the load benchmark's request (wrk, 64 connections, 6 s), the
# servers on core 0 and wrk on core 1 as in the load benchmark.
#
# Wall-clock figures on this host move by 10-25% from run to run;
# instruction counts are exact, so a change of a few hundred instructions
# per request shows. They count user space only (not the kernel's share)
# and say nothing of cache misses: they complement the load benchmark,
# they do not replace it. Under valgrind both servers run ~50x slower;
# what is compared is the count per request.
#
#   benches/instructions.sh            # the access log off (RUST_LOG=warn)
#   RUST_LOG=info benches/instructions.sh    # on, as by default
#
# Writes the callgrind files to $OUT (default target/instructions) for
# `callgrind_annotate`. Needs valgrind and wrk (apt-get install valgrind wrk).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in valgrind callgrind_control wrk taskset; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install valgrind wrk)" >&2; exit 1; }
done
log_level=${RUST_LOG:-warn}
out=${OUT:-target/instructions}
mkdir -p "$out"

cargo build --release --quiet
load=$(cargo bench --bench load --no-run 2>&1 | sed -n 's/.*Executable benches\/load.rs (\(.*\))/\1/p')
[ -x "$load" ] || { echo "could not find the load benchmark's binary" >&2; exit 1; }
"$load" --print-request-script > "$out/request.lua"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

wait_for() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.2; done; echo "nothing listens on $1" >&2; exit 1; }

# measure NAME PID PORT: zero the counters after a warm-up, count over one
# wrk run, dump, and print instructions per request.
measure() {
    local name=$1 pid=$2 port=$3 url="http://127.0.0.1:$3/catalog"
    taskset -c 1 wrk -t1 -c64 -d3s -s "$out/request.lua" "$url" > /dev/null
    callgrind_control -z "$pid" > /dev/null 2>&1
    local requests
    requests=$(taskset -c 1 wrk -t1 -c64 -d6s -s "$out/request.lua" "$url" | awk '/requests in/ {print $1}')
    callgrind_control -d "$pid" > /dev/null 2>&1
    sleep 1
    local dump instructions
    dump=$(ls -t "$out/$name.callgrind".* | head -1)
    instructions=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
    per_request=$((instructions / requests))
    printf '%-10s %8d requests  %6d instructions per request  (%s)\n' \
        "$name" "$requests" "$per_request" "$dump"
}

rm -f "$out"/*.callgrind*
direct_port=$(port)
taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$out/direct.callgrind" \
    "$load" --serve-upstream "$direct_port" cache > "$out/direct.log" 2>&1 &
pids+=($!)
wait_for "$direct_port"
measure direct "${pids[-1]}" "$direct_port"
direct=$per_request

upstream_port=$(port)
taskset -c 0 "$load" --serve-upstream "$upstream_port" cache > /dev/null 2>&1 &
pids+=($!)
wait_for "$upstream_port"
proxy_port=$(port)
RUST_LOG=$log_level taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$out/soapcache.callgrind" \
    target/release/soapcache serve --listen "127.0.0.1:$proxy_port" --admin "127.0.0.1:$(port)" \
    --upstream "http://127.0.0.1:$upstream_port" > "$out/soapcache.log" 2>&1 &
pids+=($!)
wait_for "$proxy_port"
echo "(RUST_LOG=$log_level)"
measure soapcache "${pids[-1]}" "$proxy_port"
python3 -c "print(f'soapcache / direct: {$per_request / $direct:.2f}x the instructions per request')"
