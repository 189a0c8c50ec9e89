#!/bin/bash
# What TLS costs on the three-node dev cluster (RF=3, fsync always, 1 KiB records, a
# --no-search topic of 8 partitions): ROUNDS alternating rounds of plain peers
# (--no-peer-tls), peer mutual TLS (the default) and peer + client TLS (--tls). Each run
# produces COUNT records as fast as it can, then for 10 s at half that rate (latency).
# One unreported warm-up run goes first (the first run on a fresh machine is slow).
# Usage: tls.sh [COUNT] [ROUNDS]. Prints one line per run.
set -u
COUNT=${1:-500000}
ROUNDS=${2:-4}
BIN=${BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release}
W=/tmp/strata-tls-bench
run() { # name, dev flags, client flags, report?
  rm -rf $W; mkdir -p $W
  $BIN/strata dev --data-dir $W/d $2 > $W/dev.log 2>&1 &
  local pid=$!
  for _ in $(seq 200); do grep -q "Strata is running" $W/dev.log 2>/dev/null && break; sleep 0.1; done
  $BIN/strata $3 topic create bench --partitions 8 --no-search > /dev/null
  $BIN/strata $3 bench produce --topic bench --count $COUNT --json > $W/full.json 2> $W/full.err
  local rate half
  rate=$(python3 -c "import json;print(int(json.load(open('$W/full.json'))['records_per_sec']))")
  $BIN/strata $3 bench produce --topic bench --rate $((rate / 2)) --duration 10s --json \
    > $W/half.json 2> $W/half.err
  half=$(python3 -c "import json;j=json.load(open('$W/half.json'));print(f\"p50 {j['latency']['p50_ms']:.1f} ms, p99 {j['latency']['p99_ms']:.1f} ms\")" 2>/dev/null || head -c 300 $W/half.json)
  [ "$4" = yes ] && echo "$1: $rate rec/s; at half rate ack $half"
  kill $pid; wait $pid 2>/dev/null
}
run warm-up "--no-peer-tls" "" no
for r in $(seq $ROUNDS); do
  run plain "--no-peer-tls" "" yes
  run peer-mtls "" "" yes
  run peer+client "--tls" "--tls-ca $W/d/tls/ca.pem" yes
done
