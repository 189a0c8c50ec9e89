#!/bin/bash
# What TLS costs on the three-node dev cluster (RF=3, fsync always, 1 KiB, --no-search,
# 8 partitions): ROUNDS alternating rounds of plain peers, peer mutual TLS (the default) and
# peer + client TLS. Usage: tls.sh [COUNT] [ROUNDS]. Prints one line per run.
set -u
COUNT=${1:-500000}
ROUNDS=${2:-3}
BIN=${BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release}
W=/tmp/strata-tls-bench
run() { # name, dev flags, client flags
  rm -rf $W; mkdir -p $W
  $BIN/strata dev --data-dir $W/d $2 > $W/dev.log 2>&1 &
  local pid=$!
  for _ in $(seq 100); do grep -q "Strata is running" $W/dev.log 2>/dev/null && break; sleep 0.1; done
  sleep 1
  $BIN/strata $3 topic create bench --partitions 8 --no-search > /dev/null
  local out
  out=$($BIN/strata $3 bench produce --topic bench --count $COUNT 2>&1 | head -2 | tr '\n' ' ')
  echo "$1: $out"
  kill $pid; wait $pid 2>/dev/null
}
for r in $(seq $ROUNDS); do
  run plain "--no-peer-tls" ""
  run peer-mtls "" ""
  run peer+client "--tls" "--tls-ca $W/d/tls/ca.pem"
done
