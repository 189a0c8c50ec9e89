#!/bin/bash
# Produce throughput on a three-node RF=3 cluster with three aggregations on the topic,
# divided by the same without, in one run: ROUNDS pairs, alternating which goes first. Every
# run gets a fresh cluster (new processes, empty data directories), so neither side inherits
# a warmed-up or cluttered node from the other; prints every pair's ratio and the median.
# Usage: agg.sh [FSYNC] [COUNT] [ROUNDS]
set -u
FSYNC=${1:-always}
COUNT=${2:-500000}
ROUNDS=${3:-3}
BIN=${BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release}
W=/tmp/benchagg; rm -rf $W; mkdir -p $W; cd $W
PEERS=1=127.0.0.1:7401,2=127.0.0.1:7402,3=127.0.0.1:7403
B=127.0.0.1:7201,127.0.0.1:7202,127.0.0.1:7203
S="$BIN/strata --brokers $B"
start() {
  rm -rf $W/n1 $W/n2 $W/n3
  for i in 1 2 3; do
    # In a subshell, so that killing it is not reported as a job of this script.
    ( $BIN/strata-broker --id $i --listen 127.0.0.1:720$i --peer-listen 127.0.0.1:740$i --http 127.0.0.1:730$i --data-dir $W/n$i --peers $PEERS --fsync $FSYNC > $W/$1-n$i.log 2>&1 &
      echo $! > $W/n$i.pid )
  done
  until $S cluster status > /dev/null 2>&1; do sleep 0.2; done
}
stop() {
  for i in 1 2 3; do kill -9 $(cat $W/n$i.pid) 2>/dev/null; done
  for i in 1 2 3; do while kill -0 $(cat $W/n$i.pid) 2>/dev/null; do sleep 0.1; done; done
}
aggs() {
  $S agg create "$1-temp" --topic "$1" --window tumbling:1m --time-field ts --group-by device \
    --measure count --measure 'avg(temperature)' --measure 'p99(temperature)' --measure 'max(temperature)' --lateness 5s > /dev/null
  $S agg create "$1-alarms" --topic "$1" --window tumbling:1m --time-field ts --group-by site \
    --filter 'status == "alarm"' --measure count --measure 'count_distinct(device)' --lateness 5s > /dev/null
  $S agg create "$1-humidity" --topic "$1" --window hopping:5m:1m --time-field ts --group-by site \
    --measure 'min(humidity)' --measure 'max(humidity)' --measure 'avg(humidity)' --lateness 5s > /dev/null
  until $S agg describe "$1-humidity" --json | python3 -c "import json,sys; d=json.load(sys.stdin); sys.exit(0 if all(p['running'] for p in d['partitions']) else 1)"; do sleep 0.5; done
}
run() {
  start "$1"
  $S topic create "$1" --partitions 8 > /dev/null
  [ "$2" = agg ] && aggs "$1"
  $S bench produce --topic "$1" --count $COUNT --payload json --json > $W/$1.json 2> $W/$1.err
  python3 -c "import json; r=json.load(open('$W/$1.json')); print('$1 ($2): %.0f rec/s, %.1f MB/s' % (r['records_per_sec'], r['mb_per_sec']))"
  [ "$1" = agg1 ] && $S agg describe agg1-temp > $W/agg1-describe.txt
  stop
}
for r in $(seq 1 $ROUNDS); do
  if [ $((r % 2)) = 1 ]; then run plain$r plain; run agg$r agg; else run agg$r agg; run plain$r plain; fi
done
python3 - <<PY
import json, statistics
ratios = []
for r in range(1, $ROUNDS + 1):
    a = json.load(open('$W/agg%d.json' % r))['records_per_sec']
    p = json.load(open('$W/plain%d.json' % r))['records_per_sec']
    ratios.append(a / p)
print('with 3 aggregations / without, per pair: ' + ' '.join('%.3f' % x for x in ratios))
print('median: %.3f' % statistics.median(ratios))
PY
cat $W/agg1-describe.txt
