#!/usr/bin/env bash
# What distributed tracing costs: a one-member Keel (release build) with tracing off, and with
# tracing on at 1,000,000 samples per million exporting every span over OTLP/gRPC to a local
# receiver (crates/keel/examples/otlp_sink.rs); etcd-style put workload with 1 client and with
# 64 clients; off and on alternate within each round; prints the medians over the rounds, with
# Keel's CPU time per 1,000 puts (user + system, from /proc), which other load on the machine
# disturbs less than throughput does.
#
#   bench/tracing_overhead.sh              # 3 rounds (about 2 minutes on 2 cores)
#   ROUNDS=5 bench/tracing_overhead.sh
#   BASELINE_KEEL=/path/to/keel bench/tracing_overhead.sh   # also a build from before tracing
#
# Ports 31300..31400 on loopback; data in a temporary directory. CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
cargo build --release --locked -p keel -p keel-bench >&2
cargo build --release --locked -p keel --example otlp_sink >&2
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d)
sink_port=31317
client_port=31379
peer_port=31380
keel=""
"$target/release/examples/otlp_sink" "127.0.0.1:$sink_port" > "$work/sink.log" &
sink=$!
cleanup() {
    [ -n "$keel" ] && kill "$keel" 2>/dev/null || true
    kill "$sink" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

start_keel() { # mode
    local tracing=() binary="$target/release/keel"
    if [ "$1" = baseline ]; then binary=$BASELINE_KEEL; fi
    if [ "$1" = on ]; then
        tracing=(--enable-distributed-tracing --distributed-tracing-sampling-rate 1000000
                 --distributed-tracing-address "127.0.0.1:$sink_port"
                 --distributed-tracing-service-name keel)
    fi
    rm -rf "$work/data"
    "$binary" --data-dir "$work/data" \
        --listen-client-urls "http://127.0.0.1:$client_port" \
        --advertise-client-urls "http://127.0.0.1:$client_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        "${tracing[@]}" 2> "$work/keel.log" &
    keel=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$client_port") 2>/dev/null; then return; fi
        sleep 0.1
    done
    echo "keel did not start:" >&2; cat "$work/keel.log" >&2; exit 1
}

stop_keel() {
    kill "$keel"; wait "$keel" 2>/dev/null || true; keel=""
}

# Keel's CPU time so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$keel/stat"; }
ticks_per_second=$(getconf CLK_TCK)

results="$work/results.tsv"
for round in $(seq "$rounds"); do
    modes="off on"
    if [ -n "${BASELINE_KEEL:-}" ]; then modes="baseline off on"; fi
    for mode in $modes; do
        start_keel "$mode"
        for clients in 1 64; do
            total=$(( clients == 1 ? 2000 : 20000 ))
            before=$(cpu_ticks)
            report=$("$target/release/keel-bench" --endpoints "127.0.0.1:$client_port" \
                --conns $(( clients == 1 ? 1 : 8 )) --clients "$clients" --total "$total" \
                --key-size 8 --val-size 256 --key-space-size 10000 --json put)
            cpu_seconds_per_1k=$(( ($(cpu_ticks) - before) * 1000000 / ticks_per_second / total ))
            echo "$report" | python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["latency"]; print("\t".join(map(str,[sys.argv[1],sys.argv[2],r["throughput_per_second"],l["p50_ms"],l["p99_ms"],sum(r["errors"].values()),int(sys.argv[3])/1000])))' "$mode" "$clients" "$cpu_seconds_per_1k" \
                >> "$results"
        done
        stop_keel
        echo "round $round, tracing $mode (mode, clients, req/s, p50 ms, p99 ms, errors, CPU s/1k):" >&2
        tail -2 "$results" >&2
    done
done
echo "spans the receiver got: $(tail -1 "$work/sink.log")" >&2
python3 - "$results" <<'PY'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().split("\n") if line]
print("| put workload | tracing | req/s | p50 ms | p99 ms | keel CPU s / 1k puts | errors |")
print("|---|---|---:|---:|---:|---:|---:|")
medians = {}
for clients in ("1", "64"):
    for mode in ("baseline", "off", "on"):
        runs = [r for r in rows if r[0] == mode and r[1] == clients]
        if not runs:
            continue
        m = [statistics.median(float(r[i]) for r in runs) for i in (2, 3, 4, 6)]
        errors = sum(int(r[5]) for r in runs)
        medians[(clients, mode)] = m
        label = {"baseline": "before tracing existed", "off": "off", "on": "on, 100 % sampled"}[mode]
        print(f"| {clients} client{'s' if clients != '1' else ''} | {label} | {m[0]:.0f} | {m[1]:.2f} | {m[2]:.2f} | {m[3]:.3f} | {errors} |")
for clients in ("1", "64"):
    off, on = medians[(clients, "off")], medians[(clients, "on")]
    if (clients, "baseline") in medians:
        base = medians[(clients, "baseline")]
        print(f"\n{clients} client(s): tracing off against before tracing: throughput {off[0] / base[0] - 1:+.1%}, CPU per put {off[3] / base[3] - 1:+.1%}", end="")
    print(f"\n{clients} client(s): throughput {on[0] / off[0] - 1:+.1%}, p50 {on[1] / off[1] - 1:+.1%}, p99 {on[2] / off[2] - 1:+.1%}, CPU per put {on[3] / off[3] - 1:+.1%} with tracing on", end="")
print()
PY
