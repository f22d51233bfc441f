#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind, for
#   direct:    the load benchmark's upstream answering directly, and
#   soapcache: soapcache answering every request from its cache (MODE=hit,
#              the default), or with every request a miss and store
#              (MODE=miss: the request carries `Cache-Control: no-cache`,
#              so soapcache forwards it, cuts `CacheControl` out of the
#              answer and stores it, every time),
# both under the load benchmark's request (wrk, 64 connections, $SECONDS_RUN
# s, default 6), the servers on core 0 and wrk on core 1 as in the load
# benchmark. MODE=miss also prints an inclusive breakdown per miss of the
# parts of the miss path, from `callgrind_annotate --inclusive=yes`.
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
#   MODE=miss benches/instructions.sh  # every request a miss and store
#   MODE=miss SECONDS_RUN=3 benches/instructions.sh
#
# Writes the callgrind files to $OUT (default target/instructions) for
# `callgrind_annotate`. Needs valgrind and wrk (apt-get install valgrind wrk).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in valgrind callgrind_control wrk taskset; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install valgrind wrk)" >&2; exit 1; }
done
log_level=${RUST_LOG:-warn}
mode=${MODE:-hit}
case "$mode" in hit|miss) ;; *) echo "MODE is hit or miss, not $mode" >&2; exit 1;; esac
seconds=${SECONDS_RUN:-6}
out=${OUT:-target/instructions}
mkdir -p "$out"

cargo build --release --quiet
load=$(cargo bench --bench load --no-run 2>&1 | sed -n 's/.*Executable benches\/load.rs (\(.*\))/\1/p')
[ -x "$load" ] || { echo "could not find the load benchmark's binary" >&2; exit 1; }
"$load" --print-request-script > "$out/request.lua"
"$load" --print-request-script no-cache > "$out/request-no-cache.lua"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

wait_for() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.2; done; echo "nothing listens on $1" >&2; exit 1; }

# measure NAME PID PORT [SCRIPT]: zero the counters after a warm-up, count
# over one wrk run, dump, and print instructions per request.
measure() {
    local name=$1 pid=$2 port=$3 url="http://127.0.0.1:$3/catalog" script=${4:-$out/request.lua}
    taskset -c 1 wrk -t1 -c64 -d3s -s "$script" "$url" > /dev/null
    callgrind_control -z "$pid" > /dev/null 2>&1
    local requests
    requests=$(taskset -c 1 wrk -t1 -c64 "-d${seconds}s" -s "$script" "$url" | awk '/requests in/ {print $1}')
    callgrind_control -d "$pid" > /dev/null 2>&1
    sleep 1
    local dump instructions
    dump=$(ls -t "$out/$name.callgrind".* | head -1)
    instructions=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
    per_request=$((instructions / requests))
    last_dump=$dump last_requests=$requests
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
admin_port=$(port)
RUST_LOG=$log_level taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$out/soapcache.callgrind" \
    target/release/soapcache serve --listen "127.0.0.1:$proxy_port" --admin "127.0.0.1:$admin_port" \
    --upstream "http://127.0.0.1:$upstream_port" > "$out/soapcache.log" 2>&1 &
pids+=($!)
wait_for "$proxy_port"
# forwarded: /stats misses summed over the services (a `no-cache`
# refresh counts as a miss).
forwarded() { python3 -c 'import json,sys,urllib.request; s=json.load(urllib.request.urlopen(sys.argv[1], timeout=60)); print(sum(v.get("misses",0) for v in s.get("services",{}).values()))' \
    "http://127.0.0.1:$admin_port/stats" 2>/dev/null || echo "?"; }
if [ "$mode" = miss ]; then
    echo "(RUST_LOG=$log_level, MODE=miss: every request Cache-Control: no-cache, a miss and store)"
    forwarded_before=$(forwarded)
    measure soapcache "${pids[-1]}" "$proxy_port" "$out/request-no-cache.lua"
    forwarded_after=$(forwarded)
    # Instructions are divided by wrk's count of the measured run; /stats
    # also counts the warm-up run.
    echo "soapcache /stats misses: $forwarded_before before the warm-up, $forwarded_after at the end (warm-up and measured runs); wrk counted $last_requests in the measured run"
else
    echo "(RUST_LOG=$log_level, MODE=hit)"
    measure soapcache "${pids[-1]}" "$proxy_port"
fi
python3 -c "print(f'soapcache / direct: {$per_request / $direct:.2f}x the instructions per request')"

if [ "$mode" = miss ]; then
    # Inclusive instructions per miss of the miss path's parts. callgrind
    # names a cost centre by file and function; a function's code inlined
    # from another file gets an entry of its own, and the same function may
    # appear under two spellings of its file, so the entries overlap. Each
    # part is the largest inclusive entry among the functions whose name
    # starts with one of its patterns (an async function's work is in its
    # `{{closure}}`, the future's poll), or, for a function inlined into
    # its caller, whose file is the one named ("in FILE"). User space only:
    # the kernel's side of the syscalls (accept, read, write, epoll) is not
    # counted by callgrind.
    callgrind_annotate --inclusive=yes --threshold=100 --auto=no "$last_dump" > "$out/soapcache.inclusive.txt" 2>/dev/null
    python3 - "$out/soapcache.inclusive.txt" "$last_requests" "$per_request" "$log_level" <<'PY'
import re, sys
path, requests, per_request, log_level = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
parts = [
    ("request scan", ["soapcache::soap::envelope::parse_request"]),
    ("key", ["soapcache::key::selector_value"]),
    ("upstream client: send_request", ["hyper_util::client::legacy::client::Client<C,B>::send_request"]),
    ("upstream client: build_request", ["soapcache::http::client::build_request"]),
    ("response inspection", ["soapcache::soap::control::inspect_response"]),
    ("splice (kept/splice)", ["soapcache::soap::control::kept", "soapcache::soap::control::splice"]),
    ("store insert: Tiers::store", ["soapcache::cache::tier::Tiers::store", "in src/cache/tier.rs"]),
    ("store insert: MemoryTier::insert", ["soapcache::cache::memory::MemoryTier::insert"]),
    ("access log", ["soapcache::ops::access_log::write"]),
]
line_re = re.compile(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(.*)$")
entries = []
for line in open(path, encoding="utf-8", errors="replace"):
    m = line_re.match(line)
    if not m or m.group(2).startswith("=>") or m.group(2).startswith("PROGRAM"):
        continue
    count = int(m.group(1).replace(",", ""))
    rest = re.sub(r"\s+\[[^\]]*\]\s*$", "", m.group(2))
    # "file:function": the first ':' not part of a "::" ends the file.
    split = re.split(r"(?<!:):(?!:)", rest, maxsplit=1)
    if len(split) != 2:
        continue
    entries.append((count, split[0].strip(), split[1].strip()))
print(f"inclusive instructions per miss ({requests} requests; total {per_request} per request; RUST_LOG={log_level}):")
for label, patterns in parts:
    best = None
    for count, file, name in entries:
        for p in patterns:
            if p.startswith("in "):
                hit = file.endswith(p[3:]) and not name.startswith("soapcache::cache::")
                shown = f"{file}: {name}"
            else:
                hit = name.startswith(p)
                shown = name
            if hit and (best is None or count > best[0]):
                best = (count, shown)
    if best is None:
        why = " (the access log is off: RUST_LOG=warn)" if label == "access log" and log_level == "warn" else ""
        print(f"  {label:<34} {'-':>8}  not in the profile{why}")
    else:
        share = 100.0 * best[0] / requests / per_request if per_request else 0.0
        print(f"  {label:<34} {best[0] // requests:>8} ({share:4.1f}%)  {best[1][:110]}")
print("  (largest inclusive entry per part; parts nest (the store insert holds MemoryTier::insert), so they do not add up;")
print("   user space only: the kernel's side of the syscalls is not counted by callgrind)")
PY
fi
