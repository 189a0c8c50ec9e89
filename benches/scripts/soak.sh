#!/bin/bash
# Soak: three strata-broker processes (RF=3, fsync always, 1 KiB records, a topic of 8
# partitions keeping 512 MiB each) driven at PCT% of their measured peak for MINUTES, with
# one fault every minute, 30 s into it: node 3 killed with SIGKILL and restarted (odd
# minutes), or node 1 or 2 paused with SIGSTOP for 4 s, longer than the election time-out
# (even minutes). Nodes 1 and 2 are never restarted, so their memory and descriptors show
# growth. Prints one line per minute: throughput, ack latency, the longest time without an
# acknowledgement, and each node's RSS, anonymous RSS and open descriptors at its end.
# SEARCH=1 indexes the topic (default: --no-search, the log path alone).
# Usage: soak.sh [MINUTES] [PCT]   (release binaries: cargo build --release)
set -u
MINUTES=${1:-30}
PCT=${2:-70}
SEARCH=${SEARCH:-0}
BIN=${BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release}
W=${W:-/tmp/strata-soak}
rm -rf $W; mkdir -p $W; cd $W
PEERS=1=127.0.0.1:7611,2=127.0.0.1:7612,3=127.0.0.1:7613
B=127.0.0.1:7601,127.0.0.1:7602,127.0.0.1:7603
start() {
  $BIN/strata-broker --id $1 --listen 127.0.0.1:760$1 --peer-listen 127.0.0.1:761$1 \
    --http 127.0.0.1:762$1 --data-dir $W/n$1 --peers $PEERS >> $W/n$1.log 2>&1 &
  echo $! > $W/n$1.pid
}
serving() { for _ in $(seq 300); do curl -sf -m 1 127.0.0.1:762$1/health > /dev/null && return; sleep 0.1; done; }
pid() { cat $W/n$1.pid; }
mem() { # RSS MB, anonymous RSS MB, descriptors of node $1
  local p; p=$(pid $1)
  awk '/^VmRSS/{r=$2} /^RssAnon/{a=$2} END{printf "%d/%d", r/1024, a/1024}' /proc/$p/status
  printf "/%d" "$(ls /proc/$p/fd | wc -l)"
}
cleanup() { for i in 1 2 3; do kill -9 $(pid $i) 2>/dev/null; done; }
trap cleanup EXIT
for i in 1 2 3; do start $i; done
for i in 1 2 3; do serving $i; done
NS=--no-search; [ "$SEARCH" = 1 ] && NS=
S="$BIN/strata --brokers $B"
$S topic create peak --partitions 8 --replication 3 $NS > /dev/null
$S topic create soak --partitions 8 --replication 3 --retention-bytes 512MiB $NS > /dev/null
$S bench produce --topic peak --count 300000 --json > $W/peak.json 2> $W/peak.err
PEAK=$(python3 -c "import json;print(int(json.load(open('$W/peak.json'))['records_per_sec']))")
$S topic delete peak > /dev/null
RATE=$((PEAK * PCT / 100))
echo "peak $PEAK rec/s; soak at $RATE rec/s ($PCT%) for $MINUTES min; search: $([ -n "$NS" ] && echo off || echo on)"
echo "min fault          rec/s   p50ms  p99ms  gap_ms  node1 rss/anon/fds  node2 rss/anon/fds  node3 rss/anon/fds"
for m in $(seq $MINUTES); do
  $S bench produce --topic soak --rate $RATE --duration 60s --json > $W/m$m.json 2> $W/m$m.err &
  BP=$!
  sleep 30
  if [ $((m % 2)) = 1 ]; then
    FAULT="kill -9 node 3"
    kill -9 $(pid 3); wait $(pid 3) 2>/dev/null; start 3; serving 3
  else
    V=$(( (m / 2) % 2 + 1 )); FAULT="pause node $V 4s"
    kill -STOP $(pid $V); sleep 4; kill -CONT $(pid $V)
  fi
  wait $BP
  python3 - "$W/m$m.json" "$m" "$FAULT" "$(mem 1)" "$(mem 2)" "$(mem 3)" <<'EOF'
import json, sys
path, m, fault, n1, n2, n3 = sys.argv[1:]
try:
    j = json.load(open(path))
    lat = j.get("latency") or {}
    print(f"{m:>3} {fault:<15}{j['records_per_sec']:>7.0f} {lat.get('p50_ms', 0):>7.1f} {lat.get('p99_ms', 0):>6.1f} {j.get('max_ack_gap_ms') or 0:>7.0f}  {n1:>18}  {n2:>18}  {n3:>18}")
except Exception as e:
    print(f"{m:>3} {fault:<15} no result ({e}); see {path[:-5]}.err  {n1}  {n2}  {n3}")
EOF
done
