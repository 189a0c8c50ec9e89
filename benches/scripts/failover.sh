#!/bin/bash
# Produce gap when the leader of a one-partition topic is killed (kill -9), RF=3.
set -u
BIN=${BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release}
W=/tmp/failrun; rm -rf $W; mkdir -p $W; cd $W
PEERS=1=127.0.0.1:7401,2=127.0.0.1:7402,3=127.0.0.1:7403
B=127.0.0.1:7201,127.0.0.1:7202,127.0.0.1:7203
for i in 1 2 3; do
  $BIN/strata-broker --id $i --listen 127.0.0.1:720$i --peer-listen 127.0.0.1:740$i --http 127.0.0.1:730$i --data-dir $W/n$i --peers $PEERS > $W/n$i.log 2>&1 &
  echo $! > $W/n$i.pid
done
sleep 3
$BIN/strata --brokers $B topic create f --partitions 1 --replication 3 > /dev/null
LEADER=$($BIN/strata --brokers $B --json cluster status | python3 -c "import json,sys;d=json.load(sys.stdin);print([r['leader'] for r in d['replicas'] if r['topic']=='f'][0])")
echo "leader of f/0: node $LEADER"
$BIN/strata --brokers $B bench produce --topic f --partitions 1 --rate 5000 --duration 12s --json > $W/gap.json 2>$W/gap.err &
BP=$!
sleep 5
kill -9 $(cat $W/n$LEADER.pid); echo "killed node $LEADER at $(date +%T.%N)"
wait $BP
cat $W/gap.json; tail -3 $W/gap.err
$BIN/strata --brokers $B cluster status 2>/dev/null | head -12
for i in 1 2 3; do kill -9 $(cat $W/n$i.pid) 2>/dev/null; done
