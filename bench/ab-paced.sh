#!/usr/bin/env bash
# The paced fan-out (200 msg/s into 100 members, compare.sh's "paced" config), pinned as
# compare.sh runs it, alternating two builds run by run: is one build's p99 worse than the
# other's, or is it the hour?
#
#   bench/ab-paced.sh OLD_BENCH NEW_BENCH [RUNS]     default 6 pairs
#
# OLD_BENCH and NEW_BENCH are conclave-bench binaries, each run with its own tree's
# conclave beside it (target/release/): a worktree of the old commit built with
# `cargo build --release -p conclave -p conclave-bench`, against this tree's. Loopback only;
# each run is bounded (timeout 200 s). Prints one line a run, with the host's steal time.
set -u
[ $# -ge 2 ] || { sed -n '2,11p' "$0" >&2; exit 2; }
OLD=$1 NEW=$2 RUNS=${3:-6}
for b in "$OLD" "$NEW"; do [ -x "$b" ] || { echo "ab-paced.sh: no conclave-bench at $b" >&2; exit 1; }; done
steal_ms() { awk '/^cpu /{print $9 * 10}' /proc/stat; }
for i in $(seq 1 "$RUNS"); do
  for which in old new; do
    B=$OLD; [ "$which" = new ] && B=$NEW
    s0=$(steal_ms)
    json=$(timeout 200 taskset -c 1 "$B" --threads 1 --server-cpus 0 --max-secs 120 --concurrency 256 --json \
      fanout --members 100 --senders 10 --messages 100 --size 200 --rate 20 2>/dev/null)
    s1=$(steal_ms)
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); l=d["latency"]
print(sys.argv[2], sys.argv[3], "p50", l.get("p50_ms"), "p99", l["p99_ms"], "max", l.get("max_ms"), "lost", d["lost"], "steal_ms", sys.argv[4])' \
      "$json" "$i" "$which" $((s1 - s0)) || echo "$i $which failed"
  done
done
