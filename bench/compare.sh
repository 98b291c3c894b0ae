#!/usr/bin/env bash
# Keel against etcd, side by side, on this machine: builds Keel and keel-bench in release, then
# runs `keel-bench compare`, which starts a 3-member etcd and a 3-member Keel on loopback (ports
# 30000..32000, temporary data directories), runs every workload on each in turn for several
# rounds, measures restart-to-serving and memory with many keys, and prints Markdown tables of
# medians and Keel/etcd ratios (progress goes to stderr).
#
#   bench/compare.sh                  # the full comparison (about 10 minutes on 2 cores)
#   bench/compare.sh --quick          # smaller runs (about 2 minutes)
#   bench/compare.sh --only put --rounds 5 --restart-keys 0 --json-out /tmp/put.json
#
# Any `keel-bench compare` flag may follow (`keel-bench compare --help`). ETCD=/path/to/etcd
# picks another etcd binary; CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."

etcd=${ETCD:-/usr/bin/etcd}
if [ ! -x "$etcd" ]; then
    echo "no etcd at $etcd: apt-get install -y etcd-server etcd-client (Debian's etcd 3.4)" >&2
    exit 1
fi
cargo build --release --locked -p keel -p keel-bench >&2
target=${CARGO_TARGET_DIR:-target}
echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB; $("$etcd" --version | head -1)" >&2
exec "$target/release/keel-bench" compare --keel "$target/release/keel" --etcd "$etcd" "$@"
