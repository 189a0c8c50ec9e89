#!/bin/bash
# RF=3 vs single node, same run. Usage: bench-rf3.sh FSYNC
set -u
FSYNC=${1:-always}
BIN=${BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release}
W=/tmp/benchrun; rm -rf $W; mkdir -p $W; cd $W
PEERS=1=127.0.0.1:7401,2=127.0.0.1:7402,3=127.0.0.1:7403
B=127.0.0.1:7201,127.0.0.1:7202,127.0.0.1:7203
start3() {
  for i in 1 2 3; do
    $BIN/strata-broker --id $i --listen 127.0.0.1:720$i --peer-listen 127.0.0.1:740$i --http 127.0.0.1:730$i --data-dir $W/n$i --peers $PEERS --fsync $FSYNC > $W/n$i.log 2>&1 &
    echo $! > $W/n$i.pid
  done
  sleep 3
}
stop3() { for i in 1 2 3; do kill -9 $(cat $W/n$i.pid) 2>/dev/null; done; sleep 1; }
echo "dd: $(dd if=/dev/zero of=$W/dd bs=1M count=1024 conv=fdatasync 2>&1 | tail -1)"; rm -f $W/dd
start3
$BIN/strata --brokers $B bench produce --topic t --partitions 8 --count 1000000 --json > $W/rf3-full.json 2>$W/rf3-full.err
cat $W/rf3-full.json
RATE=$(python3 -c "import json;print(int(json.load(open('$W/rf3-full.json'))['records_per_sec']/2))")
$BIN/strata --brokers $B bench produce --topic t --partitions 8 --rate $RATE --duration 10s --json > $W/rf3-half.json 2>$W/rf3-half.err
cat $W/rf3-half.json
stop3
# single node, same machine, same run
$BIN/strata-broker --id 1 --listen 127.0.0.1:7211 --peer-listen 127.0.0.1:7411 --http 127.0.0.1:7311 --data-dir $W/single --fsync $FSYNC > $W/single.log 2>&1 &
SP=$!; sleep 2
$BIN/strata --brokers 127.0.0.1:7211 bench produce --topic t --partitions 8 --count 1000000 --json > $W/one-full.json 2>$W/one-full.err
cat $W/one-full.json
RATE1=$(python3 -c "import json;print(int(json.load(open('$W/one-full.json'))['records_per_sec']/2))")
$BIN/strata --brokers 127.0.0.1:7211 bench produce --topic t --partitions 8 --rate $RATE1 --duration 10s --json > $W/one-half.json 2>$W/one-half.err
cat $W/one-half.json
kill -9 $SP
