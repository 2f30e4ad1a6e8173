#!/usr/bin/env bash
# Conclave against the IRC servers of ../shared/peer, round by round (the machine's speed drifts,
# so servers are compared within the same minutes), and the ratios.
#
#   bench/compare.sh [ROUNDS] [pinned|unpinned]      default: 3 pinned
#
# Each round runs the three fan-out configurations below on each server, then holds
# IDLE_CLIENTS idle connections (default 10000; 0 skips) for memory per connection and connect
# rate (the peers' clients register and join one of IDLE_CLIENTS/100 channels, their method).
#
# Pinned: each server on CPU 0, its load generator on CPU 1 with one thread (the peers' method,
# ../shared/peer/README.md §4); unpinned: no taskset, two load-generator threads.
# Needs root the first time: the peers' setup.sh installs ngIRCd and InspIRCd from Debian and
# builds their load generator. The peer folder is copied to target/peer (shared/ is read-only);
# PEER_DIR overrides. Everything listens on 127.0.0.1 only, every run is bounded (timeout).
# Raw output goes to target/compare/*.txt; the summary is printed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${1:-3}
MODE=${2:-pinned}
PEER_SRC=${PEER_SRC:-$ROOT/../shared/peer}
PEER_DIR=${PEER_DIR:-$ROOT/target/peer}
OUT_DIR=$ROOT/target/compare
mkdir -p "$OUT_DIR"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RAW=$OUT_DIR/compare-$STAMP-$MODE.txt
SUMMARY=$OUT_DIR/compare-$STAMP-$MODE.tsv
IDLE_SUMMARY=$OUT_DIR/compare-$STAMP-$MODE-idle.tsv
IDLE_CLIENTS=${IDLE_CLIENTS:-10000}

if [ ! -x "$PEER_DIR/ircload/target/release/ircload" ]; then
  [ -d "$PEER_SRC" ] || { echo "compare.sh: no peer folder at $PEER_SRC (set PEER_SRC)" >&2; exit 1; }
  mkdir -p "$PEER_DIR" && cp -r "$PEER_SRC"/. "$PEER_DIR"/ && chmod -R u+w "$PEER_DIR"
  # InspIRCd runs as user irc and must reach the folder.
  d=$PEER_DIR; while [ "$d" != / ]; do chmod o+x "$d" 2>/dev/null; d=$(dirname "$d"); done
  (cd "$PEER_DIR" && ./setup.sh) || { echo "compare.sh: the peers' setup.sh failed" >&2; exit 1; }
fi
cargo build --release -p conclave -p conclave-bench || exit 1
BENCH=$ROOT/target/release/conclave-bench
IRCLOAD=$PEER_DIR/ircload/target/release/ircload

if [ "$MODE" = pinned ]; then
  L_IRC=(taskset -c 1 "$IRCLOAD" --threads 1); PIN=0
  L_CON=(taskset -c 1 "$BENCH" --threads 1 --server-cpus 0)
else
  L_IRC=("$IRCLOAD" --threads 2); PIN=
  L_CON=("$BENCH" --threads 2)
fi

# name | ircload/conclave-bench fanout arguments
CONFIGS=(
  "100x10x1000|--members 100 --senders 10 --messages 1000 --size 200"
  "1000x1x100|--members 1000 --senders 1 --messages 100 --size 200"
  "paced-100x10-20/s|--members 100 --senders 10 --messages 100 --size 200 --rate 20"
)

printf 'round\tserver\tconfig\tdeliveries_per_s\tp99_ms\tlost\tserver_cpu_percent\thost_steal_ms\n' > "$SUMMARY"
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$SUMMARY"; }
# CPU time the hypervisor gave to others, all CPUs, in ms (/proc/stat "steal", 10 ms ticks): a
# round in which it moved by much measured the host as well as the server.
steal_ms() { awk '/^cpu /{print $9 * 10}' /proc/stat; }
printf 'round\tserver\tready\tconnects_per_s\tkib_per_conn\n' > "$IDLE_SUMMARY"
record_idle() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$IDLE_SUMMARY"; }

# One conclave-bench run (its arguments); its JSON on stdout and in $RAW.
run_conclave() {
  local json
  json=$(timeout 400 "${L_CON[@]}" --max-secs 300 --concurrency 256 --json "$@" 2>>"$RAW")
  echo "$json" >> "$RAW"
  echo "$json"
}

# One ircload run (its arguments) against a fresh server $1, with that server's best number of
# connection attempts in flight; its output on stdout and in $RAW. Fails if the server does not start.
run_peer() {
  local S=$1 C=16 P text
  shift
  [ "$S" = inspircd ] && C=1000
  (cd "$PEER_DIR" && ./peer.sh stop "$S" >/dev/null 2>&1)
  P=$(cd "$PEER_DIR" && ./peer.sh start "$S" $PIN 2>>"$RAW") || { echo "start failed: $S" | tee -a "$RAW" >&2; return 1; }
  sleep 0.5
  text=$(cd "$PEER_DIR" && timeout 130 "${L_IRC[@]}" --server-pid "$P" --max-secs 60 --concurrency $C "$@" 2>&1)
  echo "$text" >> "$RAW"
  (cd "$PEER_DIR" && ./peer.sh stop "$S" >/dev/null)
  echo "$text"
}

for round in $(seq 1 "$ROUNDS"); do
  for S in ngircd inspircd conclave; do
    for entry in "${CONFIGS[@]}"; do
      cfg=${entry%%|*}; args=${entry#*|}
      echo "### round $round [$S] $cfg ($MODE)" | tee -a "$RAW"
      steal0=$(steal_ms)
      if [ "$S" = conclave ]; then
        json=$(run_conclave fanout $args)
        read -r dps p99 lost cpu < <(python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(d["deliveries_per_s"], d["latency"]["p99_ms"], d["lost"], d.get("server_cpu_percent", "-"))' <<<"$json" 2>/dev/null || echo "- - - -")
      else
        EXTRA=(); [ "$S" = ngircd ] && EXTRA=(--sender-cmd "OPER bench benchpw" --sender-cmd "MODE {nick} +F")
        text=$(run_peer "$S" "${EXTRA[@]}" fanout $args) || continue
        dps=$(grep -o -- '-> [0-9]* deliveries/s' <<<"$text" | grep -o '[0-9]*' || echo -)
        p99=$(grep -o 'p99=[0-9.]*ms' <<<"$text" | head -1 | sed 's/p99=//; s/ms//' || echo -)
        lost=$(grep -o 'lost=[0-9]*' <<<"$text" | head -1 | grep -o '[0-9]*' || echo -)
        cpu=$(grep -o 'cpu\[send+deliver\].* server=[0-9]*%' <<<"$text" | head -1 | grep -o 'server=[0-9]*' | grep -o '[0-9]*' || echo -)
      fi
      steal=$(( $(steal_ms) - steal0 ))
      record "$round" "$S" "$cfg" "${dps:--}" "${p99:--}" "${lost:--}" "${cpu:--}" "$steal"
      echo "    deliveries/s=${dps:--} p99=${p99:--}ms lost=${lost:--} server_cpu=${cpu:--}% host_steal=${steal}ms"
    done
    [ "$IDLE_CLIENTS" -gt 0 ] || continue
    echo "### round $round [$S] idle $IDLE_CLIENTS ($MODE)" | tee -a "$RAW"
    if [ "$S" = conclave ]; then
      json=$(run_conclave idle --clients "$IDLE_CLIENTS" --hold 3)
      read -r ready cps kib < <(python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(d["ready"], d["connects_per_s"], d["kib_per_connection"])' <<<"$json" 2>/dev/null || echo "- - -")
    else
      text=$(run_peer "$S" idle --clients "$IDLE_CLIENTS" --channels $((IDLE_CLIENTS / 100 > 0 ? IDLE_CLIENTS / 100 : 1)) --hold 3) || continue
      ready=$(grep -o 'setup: ready=[0-9]*' <<<"$text" | grep -o '[0-9]*' || echo -)
      cps=$(grep -o -- '-> [0-9]* conn/s' <<<"$text" | grep -o '[0-9]*' || echo -)
      bytes=$(grep -o -- '-> [0-9]* bytes/connection' <<<"$text" | grep -o '[0-9]*' || echo)
      kib=$([ -n "$bytes" ] && python3 -c "print(round($bytes / 1024, 1))" || echo -)
    fi
    record_idle "$round" "$S" "${ready:--}" "${cps:--}" "${kib:--}"
    echo "    ready=${ready:--} connects/s=${cps:--} KiB/conn=${kib:--}"
  done
done

python3 - "$SUMMARY" "$MODE" "$IDLE_SUMMARY" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def num(x):
    try: return float(x)
    except ValueError: return None
print(f"\nmedians over rounds ({sys.argv[2]}); raw: {sys.argv[1]}")
for cfg in dict.fromkeys(r["config"] for r in rows):
    med = {}
    for s in ("ngircd", "inspircd", "conclave"):
        d = [num(r["deliveries_per_s"]) for r in rows if r["config"] == cfg and r["server"] == s]
        p = [num(r["p99_ms"]) for r in rows if r["config"] == cfg and r["server"] == s]
        d = [x for x in d if x is not None]; p = [x for x in p if x is not None]
        med[s] = (statistics.median(d) if d else None, statistics.median(p) if p else None)
    best = max((med[s][0] or 0) for s in ("ngircd", "inspircd"))
    def show(s):
        d, p = med[s]
        return f"{s} {d or 0:,.0f}/s p99 {'-' if p is None else f'{p:.1f}'} ms"
    line = "  ".join(show(s) for s in med)
    ratio = f"{(med['conclave'][0] or 0) / best:.2f}x best peer" if best else "-"
    print(f"{cfg:>20}: {line}  -> conclave {ratio}")
    if cfg.startswith("paced"):
        # A paced p99 is a run's worst burst or two: each round's, with what the host took meanwhile.
        p99s = "  ".join(
            s + " " + " ".join(f"{r['p99_ms']}({r.get('host_steal_ms') or '-'})" for r in rows
                               if r["config"] == cfg and r["server"] == s)
            for s in ("ngircd", "inspircd", "conclave"))
        print(f"{'':>20}  p99 ms by round (host steal ms in the run): {p99s}")
        continue
    # Round by round: Conclave over the best peer of the same round.
    by_round = []
    for rnd in dict.fromkeys(r["round"] for r in rows):
        got = {r["server"]: num(r["deliveries_per_s"]) for r in rows if r["config"] == cfg and r["round"] == rnd}
        peer = max((got.get(s) or 0) for s in ("ngircd", "inspircd"))
        if peer and got.get("conclave"):
            by_round.append(f"{got['conclave'] / peer:.2f}x")
    # Deliveries per second of server CPU (the server's share of one core in the window):
    # what the machine's drift and an idle server touch less than deliveries per second.
    per_cpu = {}
    for s in ("ngircd", "inspircd", "conclave"):
        xs = [num(r["deliveries_per_s"]) / (num(r["server_cpu_percent"]) / 100) for r in rows
              if r["config"] == cfg and r["server"] == s and num(r["deliveries_per_s"])
              and num(r.get("server_cpu_percent") or "-")]
        per_cpu[s] = statistics.median(xs) if xs else None
    shown = "  ".join(f"{s} {'-' if v is None else f'{v:,.0f}'}" for s, v in per_cpu.items())
    print(f"{'':>20}  rounds: {' '.join(by_round) or '-'};  deliveries per server CPU-second: {shown}")
idle = list(csv.DictReader(open(sys.argv[3]), delimiter="\t"))
if idle:
    print(f"\nidle connections, medians over rounds; raw: {sys.argv[3]}")
    for s in ("ngircd", "inspircd", "conclave"):
        def med(key):
            xs = [num(r[key]) for r in idle if r["server"] == s]
            xs = [x for x in xs if x is not None]
            return statistics.median(xs) if xs else None
        ready, cps, kib = med("ready"), med("connects_per_s"), med("kib_per_conn")
        show = lambda x, f: "-" if x is None else format(x, f)
        print(f"{s:>20}: ready {show(ready, ',.0f')}  {show(cps, ',.0f')} conn/s  {show(kib, '.1f')} KiB/conn")
PY
