//! Multi-node tests: three `strata-test-node` processes on loopback, Raft traffic through
//! proxies the tests cut, nodes killed with SIGKILL.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use strata_client::{ProducerRecord, StartAt, TopicSpec};
use strata_tests::cluster::{TestCluster, read_log};
use strata_tests::{eventually, hit_numbers, next_record, reader};

const NODE: &str = env!("CARGO_BIN_EXE_strata-test-node");

fn rf3(partitions: u32) -> TopicSpec {
    TopicSpec {
        partitions,
        replication_factor: 3,
        ..TopicSpec::default()
    }
}

/// Waits until every node's replica of every partition has committed `per_partition`
/// records.
async fn wait_replicated(cluster: &TestCluster, topic: &str, partitions: u32, per_partition: u64) {
    for node in &cluster.nodes {
        let client = cluster.client_of(node.id).await;
        eventually(
            Duration::from_secs(30),
            "replicas to catch up",
            async || {
                let t = client.admin().describe_topic(topic).await.ok()?;
                (t.partitions.len() == partitions as usize
                    && t.partitions
                        .iter()
                        .all(|p| p.high_watermark == per_partition))
                .then_some(())
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_every_replica_holds_the_same_entries_after_a_produce_run() {
    let mut cluster = TestCluster::start(NODE, 3, |_| {}).await;
    let client = cluster.client().await;
    client.admin().create_topic("same", rf3(3)).await.unwrap();
    // Leaders settle on the preferred replicas, one per node (the preferred replica stands
    // first; if another wins the first election, the balancer hands leadership back).
    eventually(
        Duration::from_secs(30),
        "leaders spread over the nodes",
        async || {
            let topic = client.admin().describe_topic("same").await.ok()?;
            let leaders: std::collections::BTreeSet<u64> =
                topic.partitions.iter().map(|p| p.leader).collect();
            (leaders.len() == 3).then_some(())
        },
    )
    .await;

    let producer = client.producer().build();
    let per_partition = 2_000u64;
    let mut acks = Vec::new();
    for i in 0..per_partition {
        for p in 0..3 {
            acks.push(
                producer
                    .send(ProducerRecord::new("same", format!("{p}-{i}")).partition(p))
                    .await
                    .unwrap(),
            );
        }
    }
    for (n, ack) in acks.into_iter().enumerate() {
        let meta = ack.await.expect("acknowledged");
        assert_eq!(meta.offset, (n / 3) as u64);
    }
    // Consumers see every record once, in order.
    let mut consumer = reader(&client, "same", 0..3, StartAt::Earliest).await;
    let mut seen: BTreeMap<u32, u64> = BTreeMap::new();
    for _ in 0..per_partition * 3 {
        let r = next_record(&mut consumer).await;
        let next = seen.entry(r.partition).or_default();
        assert_eq!(r.offset, *next);
        assert_eq!(
            r.value.as_deref(),
            Some(format!("{}-{}", r.partition, r.offset).as_bytes())
        );
        *next += 1;
    }
    wait_replicated(&cluster, "same", 3, per_partition).await;
    assert_same_logs(&mut cluster, "same", 3);
}

/// Produces `count` records numbered from 0 to partition 0 of `topic` in the background,
/// recording which were acknowledged.
fn spawn_numbered_producer(
    client: strata_client::Client,
    topic: &'static str,
    count: u64,
    pace: Duration,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let producer = client
            .producer()
            .linger(Duration::from_millis(2))
            .retries(100)
            .retry_backoff(Duration::from_millis(50))
            .build();
        let mut pending = Vec::new();
        for i in 0..count {
            let ack = producer
                .send(ProducerRecord::new(topic, i.to_string()).partition(0))
                .await
                .expect("send queued");
            pending.push((i, ack));
            if i % 50 == 49 {
                // Keep a steady trickle, so that faults land mid-stream.
                tokio::time::sleep(pace).await;
            }
        }
        let mut acked = Vec::new();
        for (i, ack) in pending {
            if ack.await.is_ok() {
                acked.push(i);
            }
        }
        acked
    })
}

/// Reads partition 0 of `topic` from the start until `n` records came, through `client`.
async fn read_values(client: &strata_client::Client, topic: &str, n: usize) -> Vec<u64> {
    read_strings(client, topic, n)
        .await
        .iter()
        .map(|v| v.parse().unwrap())
        .collect()
}

/// The first value stored twice, if any.
fn first_duplicate(values: &[u64]) -> Option<u64> {
    let mut seen = std::collections::BTreeSet::new();
    values.iter().copied().find(|v| !seen.insert(*v))
}

/// Prints every replica's log of partition 0 (log id, producer id/epoch/sequence, base
/// offset, first value), to diagnose a failed check.
#[allow(clippy::print_stdout)]
fn dump_logs(cluster: &mut TestCluster, topic: &str) {
    for id in 1..=cluster.nodes.len() as u64 {
        cluster.stop(id);
    }
    if let Ok(keep) = std::env::var("STRATA_KEEP_NODE_LOGS") {
        for node in &cluster.nodes {
            let to = std::path::Path::new(&keep).join(format!("node-{}.log", node.id));
            let _ = std::fs::copy(node.log_path(), to);
        }
    }
    for (node, dir) in cluster.replica_dirs(topic, 0) {
        println!("---- replica on node {node} ----");
        for (log_id, body) in read_log(&dir) {
            let Ok(batch) = strata_storage::RecordBatch::from_bytes(body.clone()) else {
                println!("{log_id:?} ({} bytes, not a batch)", body.len());
                continue;
            };
            let first = batch
                .records()
                .next()
                .and_then(|r| r.value.map(|v| String::from_utf8_lossy(v).into_owned()));
            println!(
                "{log_id:?} pid {} epoch {} seq {} offset {} count {} first {first:?}",
                batch.producer_id(),
                batch.producer_epoch(),
                batch.base_sequence(),
                batch.base_offset(),
                batch.record_count()
            );
        }
    }
}

/// Reads partition 0 of `topic` from the start until `n` records came, as strings.
async fn read_strings(client: &strata_client::Client, topic: &str, n: usize) -> Vec<String> {
    let mut consumer = reader(client, topic, [0], StartAt::Earliest).await;
    let mut values = Vec::with_capacity(n);
    while values.len() < n {
        let r = next_record(&mut consumer).await;
        values.push(String::from_utf8_lossy(r.value.as_deref().unwrap()).into_owned());
    }
    values
}

/// Every acknowledged value appears exactly once, and values appear in send order.
fn check_acknowledged(values: &[u64], acked: &[u64]) {
    if let Some(v) = first_duplicate(values) {
        let at: Vec<usize> = (0..values.len()).filter(|i| values[*i] == v).collect();
        let around = &values[at[0].saturating_sub(3)..(at[at.len() - 1] + 4).min(values.len())];
        panic!("value {v} stored twice, at offsets {at:?}; around: {around:?}");
    }
    let seen: std::collections::BTreeSet<u64> = values.iter().copied().collect();
    for a in acked {
        assert!(seen.contains(a), "acknowledged value {a} lost");
    }
    assert!(
        values.windows(2).all(|w| w[0] < w[1]),
        "values out of order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t31_leader_kill_loses_no_acknowledged_record() {
    let mut cluster = TestCluster::start(NODE, 3, |_| {}).await;
    let client = cluster.client().await;
    client.admin().create_topic("kill", rf3(1)).await.unwrap();
    let leader = cluster.leader_of("kill", 0).await;

    // A consumer follows the partition through the fail-over.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let follower = cluster.client().await;
    let following = tokio::spawn(async move {
        let mut consumer = reader(&follower, "kill", [0], StartAt::Earliest).await;
        loop {
            let r = next_record(&mut consumer).await;
            let value = std::str::from_utf8(r.value.as_deref().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            if tx.send(value).is_err() {
                return;
            }
        }
    });

    let count = 6_000;
    let producing = spawn_numbered_producer(
        cluster.client().await,
        "kill",
        count,
        Duration::from_millis(20),
    );
    // Kill the leader once some records are committed.
    eventually(
        Duration::from_secs(30),
        "records before the kill",
        async || {
            let t = client.admin().describe_topic("kill").await.ok()?;
            (t.partitions[0].high_watermark >= 1_000).then_some(())
        },
    )
    .await;
    cluster.kill(leader);
    let acked = producing.await.unwrap();
    assert!(
        acked.len() as u64 >= count - 50,
        "the producer went on: {} acked",
        acked.len()
    );

    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    let survivors = cluster.client_of(survivor).await;
    let new_leader = cluster.leader_of("kill", 0).await;
    assert_ne!(new_leader, leader);
    let stored = {
        let t = survivors.admin().describe_topic("kill").await.unwrap();
        t.partitions[0].high_watermark as usize
    };
    let values = read_values(&survivors, "kill", stored).await;
    check_acknowledged(&values, &acked);
    // The consumer that was following when the leader died saw the same records, in order.
    let mut followed = Vec::with_capacity(stored);
    while followed.len() < stored {
        match tokio::time::timeout(strata_tests::RECORD_WAIT, rx.recv()).await {
            Ok(Some(v)) => followed.push(v),
            _ => panic!(
                "the following consumer stalled after {} records",
                followed.len()
            ),
        }
    }
    following.abort();
    assert_eq!(followed, values);

    // The killed node comes back and catches up to the same log.
    cluster.restart(leader).await;
    wait_replicated(&cluster, "kill", 1, stored as u64).await;
    let back = cluster.client_of(leader).await;
    let again = read_values(&back, "kill", stored).await;
    assert_eq!(again, values);
    assert_same_logs(&mut cluster, "kill", 1);
}

/// Stops every node and checks that each partition's replicas hold the same entries. A
/// replica may end with an extra entry without records: a leader elected while the others
/// were being stopped writes a blank entry that a stopped node never received.
fn assert_same_logs(cluster: &mut TestCluster, topic: &str, partitions: u32) {
    for id in 1..=cluster.nodes.len() as u64 {
        cluster.stop(id);
    }
    for p in 0..partitions {
        let replicas = cluster.replica_dirs(topic, p);
        assert_eq!(replicas.len(), 3);
        let logs: Vec<_> = replicas.iter().map(|(_, dir)| read_log(dir)).collect();
        assert!(logs[0].iter().any(|(_, body)| !body.is_empty()));
        let names: Vec<String> = replicas
            .iter()
            .map(|(node, _)| format!("replica {node} of partition {p}"))
            .collect();
        assert_logs_agree(&logs, &names);
    }
}

/// Logs agree: identical over the entries all hold, and what only some hold is blank (a
/// leader elected while the nodes were being stopped writes a blank entry the stopped ones
/// never received).
fn assert_logs_agree(logs: &[Vec<(strata_storage::LogId, bytes::Bytes)>], names: &[String]) {
    let common = logs.iter().map(Vec::len).min().unwrap_or(0);
    for (i, log) in logs.iter().enumerate() {
        if let Some(at) = (0..common).find(|j| log[*j] != logs[0][*j]) {
            panic!(
                "{} differs from {} at entry {at}: {:?} ({} bytes) vs {:?} ({} bytes); lengths {:?}",
                names[i],
                names[0],
                log[at].0,
                log[at].1.len(),
                logs[0][at].0,
                logs[0][at].1.len(),
                logs.iter().map(Vec::len).collect::<Vec<_>>()
            );
        }
        assert!(
            log[common..].iter().all(|(_, body)| body.is_empty()),
            "{} holds records the others lack",
            names[i]
        );
    }
}

/// A one-record batch, idempotent when `producer` is given: (id, epoch, sequence).
fn batch(value: &str, producer: Option<(i64, i16, i32)>) -> bytes::Bytes {
    let mut b = strata_storage::BatchBuilder::new();
    b.push(strata_storage::NewRecord::value(
        1_700_000_000_000,
        value.as_bytes(),
    ))
    .unwrap();
    let b = match producer {
        Some((id, epoch, seq)) => b.producer(id, epoch, seq),
        None => b,
    };
    b.finish().unwrap().into_bytes()
}

/// An idempotent producer id and epoch from the node at `address`, with the raw API.
async fn init_producer(address: std::net::SocketAddr) -> (i64, i16) {
    use strata_proto::v1;
    let mut rpc = v1::produce_client::ProduceClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    let id = rpc
        .init_producer(v1::InitProducerRequest {})
        .await
        .unwrap()
        .into_inner();
    (id.producer_id, id.producer_epoch as i16)
}

/// Sends one batch to partition 0 of `topic` at `address` with the raw API: the base
/// offset, or the error code.
async fn raw_produce(
    address: std::net::SocketAddr,
    topic: &str,
    batch: bytes::Bytes,
    timeout_ms: u32,
) -> Result<u64, strata_proto::v1::ErrorCode> {
    use strata_proto::v1;
    let mut rpc = v1::produce_client::ProduceClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    let request = v1::ProduceRequest {
        topic: topic.to_string(),
        batches: vec![v1::PartitionBatch {
            partition: 0,
            batch,
        }],
        acks: v1::Acks::All as i32,
        timeout_ms,
    };
    match rpc.produce(request).await {
        Ok(r) => {
            let result = r.into_inner().results.remove(0);
            match result.error {
                Some(e) => Err(e.code()),
                None => Ok(result.base_offset),
            }
        }
        Err(status) => Err(<strata_proto::v1::ErrorDetail as prost::Message>::decode(
            status.details(),
        )
        .map_or(v1::ErrorCode::Unavailable, |d| d.code())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t32_an_isolated_node_acknowledges_nothing_and_catches_up_after_healing() {
    let mut cluster = TestCluster::start(NODE, 3, |_| {}).await;
    let client = cluster.client().await;
    client.admin().create_topic("cut", rf3(1)).await.unwrap();
    let isolated = cluster.leader_of("cut", 0).await;
    let producer = client.producer().build();
    for i in 0..100u64 {
        producer
            .send_and_wait(ProducerRecord::new("cut", i.to_string()).partition(0))
            .await
            .unwrap();
    }

    cluster.isolate(isolated);
    // The isolated leader cannot commit: whatever it is sent is not acknowledged.
    let refused = raw_produce(
        cluster.node(isolated).address,
        "cut",
        batch("lost?", None),
        2_000,
    )
    .await;
    assert!(
        refused.is_err(),
        "an isolated node acknowledged a write: {refused:?}"
    );

    // The majority elects a leader and keeps committing.
    let majority: Vec<u64> = (1..=3).filter(|id| *id != isolated).collect();
    let bootstrap = majority
        .iter()
        .map(|id| cluster.node(*id).address.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let majority_client = strata_client::Client::connect(&bootstrap).await.unwrap();
    let producer = majority_client.producer().build();
    for i in 100..300u64 {
        producer
            .send_and_wait(ProducerRecord::new("cut", i.to_string()).partition(0))
            .await
            .unwrap();
    }
    let values = read_values(&majority_client, "cut", 300).await;
    assert_eq!(
        values,
        (0..300).collect::<Vec<_>>(),
        "only acknowledged writes, in order"
    );

    cluster.heal_all();
    wait_replicated(&cluster, "cut", 1, 300).await;
    assert_same_logs(&mut cluster, "cut", 1);
}

/// Sends a batch to the partition's leader with the raw API, following leadership while it
/// moves (an election, or the balancer handing it to the preferred replica): the answer
/// that is not NOT_LEADER/UNAVAILABLE.
async fn produce_to_leader(
    cluster: &TestCluster,
    topic: &str,
    batch: bytes::Bytes,
) -> Result<u64, strata_proto::v1::ErrorCode> {
    use strata_proto::v1::ErrorCode;
    for _ in 0..50 {
        let leader = cluster.node(cluster.leader_of(topic, 0).await).address;
        match raw_produce(leader, topic, batch.clone(), 10_000).await {
            Err(ErrorCode::NotLeader | ErrorCode::Unavailable) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answer => return answer,
        }
    }
    panic!("no stable leader for {topic}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t33_a_retried_batch_whose_answer_was_lost_is_stored_once() {
    use strata_proto::v1;
    let cluster = TestCluster::start(NODE, 3, |_| {}).await;
    let client = cluster.client().await;
    client.admin().create_topic("once", rf3(1)).await.unwrap();
    let leader = cluster.node(cluster.leader_of("once", 0).await).address;
    let (pid, epoch) = init_producer(leader).await;
    assert!(pid > 0);
    let send = async |value: &str, epoch: i16, seq: i32| {
        produce_to_leader(&cluster, "once", batch(value, Some((pid, epoch, seq)))).await
    };

    let first = send("a", epoch, 0).await;
    // The answer is "lost": the producer sends the same batch again, twice at once.
    let (r1, r2) = tokio::join!(send("a", epoch, 0), send("a", epoch, 0));
    assert_eq!(first, Ok(0));
    assert_eq!(r1, Ok(0));
    assert_eq!(r2, Ok(0));
    // The next batch continues the sequence; a gap is refused; an older epoch is fenced.
    assert_eq!(send("b", epoch, 1).await, Ok(1));
    assert_eq!(
        send("c", epoch, 5).await,
        Err(v1::ErrorCode::OutOfOrderSequence)
    );
    assert_eq!(send("d", epoch + 1, 0).await, Ok(2));
    assert_eq!(
        send("e", epoch, 2).await,
        Err(v1::ErrorCode::ProducerFenced)
    );
    // A retry of an earlier batch, answered from the replicated producer state.
    assert_eq!(send("d", epoch + 1, 0).await, Ok(2));

    let t = client.admin().describe_topic("once").await.unwrap();
    assert_eq!(t.partitions[0].high_watermark, 3);
}

/// A leader that restarts before the others notice comes back as leader of the same term
/// (openraft's leader restore) with an uncommitted batch of that term in its log; a retry of
/// that batch must not be stored a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t37_a_leader_restarted_in_its_term_does_not_store_a_retry_twice() {
    let mut cluster = TestCluster::start(NODE, 3, |_| {}).await;
    let client = cluster.client().await;
    client
        .admin()
        .create_topic("restored", rf3(1))
        .await
        .unwrap();
    let (pid, epoch) = init_producer(cluster.node(1).address).await;
    let producer = |seq| Some((pid, epoch, seq));
    assert_eq!(
        produce_to_leader(&cluster, "restored", batch("a", producer(0))).await,
        Ok(0)
    );
    let leader = cluster.leader_of("restored", 0).await;
    let address = cluster.node(leader).address;
    let on_leader = cluster.client_of(leader).await;
    let bytes = async || {
        on_leader
            .admin()
            .describe_topic("restored")
            .await
            .unwrap()
            .partitions[0]
            .bytes
    };
    let before = bytes().await;
    // Cut the leader off and send it a batch: it stores it but cannot commit it.
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for other in &others {
        cluster.cut(leader, *other);
    }
    let lost = tokio::spawn(raw_produce(
        address,
        "restored",
        batch("b", producer(1)),
        5_000,
    ));
    eventually(
        Duration::from_secs(10),
        "the leader to store the batch",
        async || (bytes().await > before).then_some(()),
    )
    .await;
    // Everyone goes down at once, before the followers elect anyone, and comes back with
    // the leader still cut off.
    for id in others.iter().copied().chain([leader]) {
        cluster.kill(id);
    }
    lost.abort();
    for id in [leader].into_iter().chain(others.iter().copied()) {
        cluster.restart(id).await;
    }
    // The producer retries the batch whose answer it never got, first on the old leader
    // (which must not take it as new), then wherever the partition is led once healed.
    let first = raw_produce(address, "restored", batch("b", producer(1)), 1_000).await;
    assert_ne!(first, Ok(2), "a retry is never stored as a new batch");
    cluster.heal_all();
    let retried = produce_to_leader(&cluster, "restored", batch("b", producer(1))).await;
    assert_eq!(
        retried,
        Ok(1),
        "the retry is answered with the batch's one offset"
    );
    let c = cluster.client().await;
    let values = read_strings(&c, "restored", 2).await;
    assert_eq!(values, ["a", "b"]);
    let t = c.admin().describe_topic("restored").await.unwrap();
    assert_eq!(
        t.partitions[0].high_watermark, 2,
        "the batch is stored once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t34_a_follower_behind_the_retention_point_catches_up_through_a_snapshot() {
    let mut cluster = TestCluster::start(NODE, 3, |c| {
        c.segment_bytes = 1 << 20;
        c.max_batch_bytes = 256 << 10;
        c.retention_check_ms = 200;
    })
    .await;
    let client = cluster.client().await;
    let spec = TopicSpec {
        retention_bytes: Some(2 << 20),
        ..rf3(1)
    };
    client.admin().create_topic("old", spec).await.unwrap();
    let leader = cluster.leader_of("old", 0).await;
    let behind = (1..=3).find(|id| *id != leader).unwrap();
    cluster.kill(behind);

    let producer = client.producer().batch_bytes(128 << 10).build();
    let value = "x".repeat(1000);
    let total = 8_000u64;
    let mut acks = Vec::new();
    for _ in 0..total {
        acks.push(
            producer
                .send(ProducerRecord::new("old", value.clone()).partition(0))
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
    // Both survivors purge (whichever leads when the follower returns has no old entries).
    let mut start = u64::MAX;
    for id in (1..=3).filter(|id| *id != behind) {
        let c = cluster.client_of(id).await;
        let purged = eventually(
            Duration::from_secs(30),
            "retention on the survivors",
            async || {
                let t = c.admin().describe_topic("old").await.ok()?;
                let p = &t.partitions[0];
                (p.start_offset > 0).then_some(p.start_offset)
            },
        )
        .await;
        start = start.min(purged);
    }

    cluster.restart(behind).await;
    let back = cluster.client_of(behind).await;
    let (restart_at, hw) = eventually(
        Duration::from_secs(30),
        "the follower to catch up",
        async || {
            // Installing the snapshot moves the high watermark first; openraft then purges
            // (here: restarts) the log, which moves the start.
            let t = back.admin().describe_topic("old").await.ok()?;
            let p = &t.partitions[0];
            (p.high_watermark == total && p.start_offset > 0)
                .then_some((p.start_offset, p.high_watermark))
        },
    )
    .await;
    assert_eq!(hw, total);
    // It never received the purged records: its log starts at or after the survivors' start.
    assert!(
        restart_at >= start,
        "follower starts at {restart_at}, the survivors at {start} or later"
    );
    // It follows normal appends afterwards.
    for _ in 0..10 {
        producer
            .send_and_wait(ProducerRecord::new("old", "after").partition(0))
            .await
            .unwrap();
    }
    wait_replicated(&cluster, "old", 1, total + 10).await;
    for id in 1..=3 {
        cluster.stop(id);
    }
    // Replicas agree on every entry they both hold.
    let logs: Vec<_> = cluster
        .replica_dirs("old", 0)
        .iter()
        .map(|(_, dir)| read_log(dir))
        .collect();
    let first = logs
        .iter()
        .map(|l| l.first().map_or(u64::MAX, |(id, _)| id.index))
        .max()
        .unwrap();
    let tails: Vec<Vec<_>> = logs
        .iter()
        .map(|l| {
            l.iter()
                .filter(|(id, _)| id.index >= first)
                .cloned()
                .collect()
        })
        .collect();
    assert!(!tails[0].is_empty());
    let names: Vec<String> = (1..=tails.len())
        .map(|i| format!("replica log {i}"))
        .collect();
    assert_logs_agree(&tails, &names);
}

/// Kills, restarts and link cuts at random (seeded: `STRATA_SEED=<n>` replays a run) while
/// a producer writes; then every acknowledged record must be stored exactly once, in order,
/// on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::print_stdout)]
async fn t35_random_faults_lose_and_duplicate_nothing() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("STRATA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
        });
    println!("t35 fault schedule seed: {seed} (replay with STRATA_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let mut cluster = TestCluster::start(NODE, 3, |_| {}).await;
    let client = cluster.client().await;
    client.admin().create_topic("chaos", rf3(1)).await.unwrap();
    let count = 20_000;
    let producing = spawn_numbered_producer(
        cluster.client().await,
        "chaos",
        count,
        Duration::from_millis(20),
    );

    let mut schedule = Vec::new();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        let down: Vec<u64> = (1..=3)
            .filter(|id| !cluster.node(*id).is_running())
            .collect();
        let action = rng.random_range(0..4);
        match (action, down.first()) {
            (_, Some(&id)) if action < 2 => {
                cluster.restart(id).await;
                schedule.push(format!("restart {id}"));
            }
            (0 | 1, None) => {
                let id = rng.random_range(1..=3);
                cluster.kill(id);
                schedule.push(format!("kill {id}"));
            }
            (2, _) => {
                let a = rng.random_range(1..=3);
                let b = a % 3 + 1;
                cluster.cut(a, b);
                schedule.push(format!("cut {a}-{b}"));
            }
            _ => {
                cluster.heal_all();
                schedule.push("heal".to_string());
            }
        }
    }
    println!("t35 schedule: {schedule:?}");
    cluster.heal_all();
    for id in 1..=3 {
        if !cluster.node(id).is_running() {
            cluster.restart(id).await;
        }
    }
    let acked = tokio::time::timeout(Duration::from_secs(120), producing)
        .await
        .expect("the producer finishes")
        .unwrap();
    assert!(!acked.is_empty());
    // Every write has been answered: once all replicas agree, that is everything stored.
    let stored = eventually(Duration::from_secs(60), "replicas to agree", async || {
        let mut marks = Vec::new();
        for id in 1..=3 {
            let c = cluster.client_of(id).await;
            let t = c.admin().describe_topic("chaos").await.ok()?;
            marks.push(t.partitions[0].high_watermark);
        }
        marks
            .windows(2)
            .all(|w| w[0] == w[1])
            .then_some(marks[0] as usize)
    })
    .await;
    let values = read_values(&client, "chaos", stored).await;
    if first_duplicate(&values).is_some() {
        dump_logs(&mut cluster, "chaos");
    }
    check_acknowledged(&values, &acked);
    assert_same_logs(&mut cluster, "chaos", 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t36_group_offsets_survive_the_loss_of_the_coordinator() {
    let mut cluster = TestCluster::start(NODE, 3, |_| {}).await;
    let client = cluster.client().await;
    client.admin().create_topic("grp", rf3(4)).await.unwrap();
    let producer = client.producer().build();
    let send = async |from: u32, to: u32| {
        let mut acks = Vec::new();
        for i in from..to {
            acks.push(
                producer
                    .send(ProducerRecord::new("grp", i.to_string()).partition(i % 4))
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    };
    send(0, 400).await;
    let mut consumer = client
        .consumer()
        .group("g")
        .topic("grp")
        .auto_commit(None)
        .start_at(StartAt::Earliest)
        .build()
        .await
        .unwrap();
    for _ in 0..400 {
        next_record(&mut consumer).await;
    }
    consumer.commit().await.unwrap();
    drop(consumer);

    // The coordinator is the controller's leader: kill it.
    let status = client
        .admin()
        .node_status(&cluster.node(1).address.to_string(), Duration::from_secs(5))
        .await
        .unwrap();
    let coordinator = status.controller_leader.expect("a controller leader");
    cluster.kill(coordinator);
    let survivors = (1..=3)
        .filter(|id| *id != coordinator)
        .map(|id| cluster.node(id).address.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let client = strata_client::Client::connect(&survivors).await.unwrap();
    let committed = eventually(
        Duration::from_secs(30),
        "offsets from the new coordinator",
        async || client.admin().committed_offsets("g").await.ok(),
    )
    .await;
    assert_eq!(committed.len(), 4);
    assert!(committed.iter().all(|(_, _, o)| *o == 100), "{committed:?}");

    // A member of the group resumes after the committed offsets.
    send(400, 440).await;
    let mut consumer = client
        .consumer()
        .group("g")
        .topic("grp")
        .start_at(StartAt::Earliest)
        .build()
        .await
        .unwrap();
    let mut values = Vec::new();
    for _ in 0..40 {
        let r = next_record(&mut consumer).await;
        values.push(
            std::str::from_utf8(r.value.as_deref().unwrap())
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
    }
    values.sort_unstable();
    assert_eq!(values, (400..440).collect::<Vec<_>>());
}

/// Windows of 1 s per device of `n` events: event `i` at `base + 100·i` ms, device `d{i%3}`,
/// value `i % 97`, reading id `i % 50`. Expected (start, device) → (count, sum, distinct ids).
fn expected_windows(n: u64, base: i64) -> BTreeMap<(i64, String), (u64, f64, usize)> {
    let mut out: BTreeMap<(i64, String), (u64, f64, std::collections::BTreeSet<u64>)> =
        BTreeMap::new();
    for i in 0..n {
        let t = base + 100 * i as i64;
        let start = t.div_euclid(1000) * 1000;
        let e = out
            .entry((start, format!("d{}", i % 3)))
            .or_insert((0, 0.0, Default::default()));
        e.0 += 1;
        e.1 += (i % 97) as f64;
        e.2.insert(i % 50);
    }
    out.into_iter()
        .map(|(k, (c, s, d))| (k, (c, s, d.len())))
        .collect()
}

/// Closes every window of t40's stream (an event far ahead in each source partition), then
/// reads `readings-windows`: each expected window exactly once, with the brute-force values.
async fn check_output(
    client: &strata_client::Client,
    expected: &BTreeMap<(i64, String), (u64, f64, usize)>,
    end: i64,
) {
    let producer = client.producer().build();
    for p in 0..2 {
        let value = format!(r#"{{"t":{},"device":"later","v":0,"id":0}}"#, end + 120_000);
        producer
            .send_and_wait(ProducerRecord::new("readings", value).partition(p))
            .await
            .unwrap();
    }
    let mut consumer = reader(client, "readings-windows", [0, 1, 2], StartAt::Earliest).await;
    let mut got = BTreeMap::new();
    while got.len() < expected.len() {
        let r = next_record(&mut consumer).await;
        let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        let device = v["group"]["device"].as_str().unwrap().to_string();
        assert_eq!(r.key.as_deref(), Some(device.as_bytes()));
        let m = &v["measures"];
        let row = (
            m["count"].as_f64().unwrap() as u64,
            m["sum(v)"].as_f64().unwrap(),
            m["count_distinct(id)"].as_f64().unwrap() as usize,
        );
        let key = (v["window_start"].as_i64().unwrap(), device);
        assert_eq!(v["window_end"].as_i64(), Some(key.0 + 1000));
        assert_eq!(expected.get(&key), Some(&row), "window {key:?}");
        assert!(
            got.insert(key.clone(), row).is_none(),
            "{key:?} written twice"
        );
    }
    // Nothing else was written (the `later` windows stay open). The node asked may report
    // a follower's high watermark, a little behind.
    let written = eventually(
        Duration::from_secs(10),
        "the high watermarks to reach the records read",
        async || {
            let d = client
                .admin()
                .describe_topic("readings-windows")
                .await
                .ok()?;
            let written: u64 = d.partitions.iter().map(|p| p.high_watermark).sum();
            (written >= expected.len() as u64).then_some(written)
        },
    )
    .await;
    assert_eq!(written, expected.len() as u64);
    // Describe reports the output's progress once it is recorded.
    eventually(
        Duration::from_secs(10),
        "the output's progress in describe",
        async || {
            let d = client.aggregations().describe("per-device").await.ok()?;
            let records: u64 = d.output.iter().map(|o| o.records).sum();
            (d.output.len() == 3 && records == written).then_some(())
        },
    )
    .await;
}

/// Waits until every one of the `partitions` of an aggregation's topic runs it.
async fn wait_running(aggs: &strata_client::Aggregations, name: &str, partitions: usize) {
    eventually(
        Duration::from_secs(20),
        "every partition to run it",
        async || {
            let d = aggs.describe(name).await.ok()?;
            (d.partitions.len() == partitions && d.partitions.iter().all(|p| p.running))
                .then_some(())
        },
    )
    .await;
}

/// Aggregation results equal a brute-force computation after the leader of a partition is
/// killed mid-stream (the state is replicated with the log), and the output topic gets each
/// closed window once although the leader of one of its partitions is killed as well; bad
/// definitions are refused with a message saying what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t40_aggregations_survive_a_leader_kill_and_equal_brute_force() {
    use strata_client::AggregationSpec;
    let mut cluster = TestCluster::start(NODE, 3, |_| {}).await;
    let client = cluster.client().await;
    client
        .admin()
        .create_topic("readings", rf3(2))
        .await
        .unwrap();
    client
        .admin()
        .create_topic("readings-windows", rf3(3))
        .await
        .unwrap();
    let aggs = client.aggregations();
    let spec = AggregationSpec {
        name: "per-device".into(),
        topic: "readings".into(),
        window: "tumbling:1s".into(),
        time_field: "t".into(),
        group_by: vec!["device".into()],
        measures: vec![
            "count".into(),
            "sum(v)".into(),
            "avg(v)".into(),
            "count_distinct(id)".into(),
        ],
        lateness_ms: 60_000,
        emit_to: "readings-windows".into(),
        ..Default::default()
    };
    for (change, says) in [
        (
            AggregationSpec {
                window: "tumbling:0s".into(),
                ..spec.clone()
            },
            "greater than zero",
        ),
        (
            AggregationSpec {
                measures: vec!["median(v)".into()],
                ..spec.clone()
            },
            "unknown measure",
        ),
        (
            AggregationSpec {
                filter: "v > ".into(),
                ..spec.clone()
            },
            "expected a field or a value",
        ),
        (
            AggregationSpec {
                topic: "nope".into(),
                ..spec.clone()
            },
            "topic does not exist",
        ),
        (
            AggregationSpec {
                emit_to: "nope".into(),
                ..spec.clone()
            },
            "output topic `nope` does not exist",
        ),
        (
            AggregationSpec {
                emit_to: "readings".into(),
                ..spec.clone()
            },
            "cannot emit into the topic it reads",
        ),
    ] {
        let e = aggs.create(change).await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(strata_client::ErrorCode::InvalidArgument),
            "{e}"
        );
        assert!(e.to_string().contains(says), "{e}");
    }
    aggs.create(spec.clone()).await.unwrap();
    let e = aggs.create(spec.clone()).await.unwrap_err();
    assert_eq!(e.code(), Some(strata_client::ErrorCode::AggregationExists));
    wait_running(&aggs, "per-device", 2).await;

    let n = 3_000u64;
    let base = 1_700_000_000_000i64;
    let victim = cluster.leader_of("readings", 0).await;
    let producer = cluster
        .client()
        .await
        .producer()
        .linger(Duration::from_millis(2))
        .build();
    let mut acks = Vec::new();
    let mut output_victim = None;
    for i in 0..n {
        let device = format!("d{}", i % 3);
        let value = format!(
            r#"{{"t":{},"device":"{device}","v":{},"id":{}}}"#,
            base + 100 * i as i64,
            i % 97,
            i % 50
        );
        acks.push(
            producer
                .send(ProducerRecord::new("readings", value).key(device))
                .await
                .unwrap(),
        );
        // Windows close (60 s of lateness) and go to the output topic while the leader of
        // a source partition, then the leader of an output partition, is killed (a leader
        // resuming from older progress is covered by the emitter's own test).
        if i == n / 2 {
            cluster.kill(victim);
        }
        if i == n * 5 / 8 {
            cluster.restart(victim).await;
        }
        if i == n * 3 / 4 {
            let leader = cluster.leader_of("readings-windows", 1).await;
            cluster.kill(leader);
            output_victim = Some(leader);
        }
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for ack in acks {
        ack.await.expect("every record is acknowledged");
    }
    cluster.restart(output_victim.unwrap()).await;

    let expected = expected_windows(n, base);
    for node in 1..=3 {
        // Every node answers the same merged result (from its own replicas).
        let c = cluster.client_of(node).await;
        let got = eventually(
            Duration::from_secs(30),
            "results to equal brute force",
            async || {
                let r = c
                    .aggregations()
                    .query("per-device", None, None, &[])
                    .await
                    .ok()?;
                let got: BTreeMap<(i64, String), (u64, f64, usize)> = r
                    .rows
                    .iter()
                    .map(|row| {
                        let v = |i: usize| row.values[i].value.unwrap_or(f64::NAN);
                        (
                            (row.start_ms, row.group[0].clone()),
                            (v(0) as u64, v(1), v(3) as usize),
                        )
                    })
                    .collect();
                (got == expected).then_some(r)
            },
        )
        .await;
        for row in &got.rows {
            let avg = row.values[2].value.unwrap();
            let sum = row.values[1].value.unwrap();
            assert!((avg - sum / row.events as f64).abs() < 1e-9);
        }
    }
    // One group, a time range.
    let r = aggs
        .query(
            "per-device",
            Some(base + 5_000),
            Some(base + 8_000),
            &[("device", "d1")],
        )
        .await
        .unwrap();
    assert_eq!(r.rows.len(), 3);
    assert!(r.rows.iter().all(|row| row.group == ["d1"]));
    let e = aggs
        .query("per-device", None, None, &[("site", "x")])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(strata_client::ErrorCode::InvalidArgument));
    let e = aggs.query("missing", None, None, &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(strata_client::ErrorCode::UnknownAggregation));
    check_output(&client, &expected, base + 100 * n as i64).await;
    // The control records take offsets but reach no consumer; the data is all there.
    let mut consumer = reader(&client, "readings", [0, 1], StartAt::Earliest).await;
    for _ in 0..n {
        let r = next_record(&mut consumer).await;
        assert!(r.value.as_deref().unwrap().starts_with(b"{\"t\":"));
    }
    let e = client
        .admin()
        .delete_topic("readings-windows")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("drop it first"), "{e}");
    aggs.drop("per-device").await.unwrap();
    assert!(aggs.list().await.unwrap().is_empty());

    // Partitions with one replica each: every node answers for the ones it lacks by asking
    // the node that holds them.
    let spread = TopicSpec {
        partitions: 3,
        replication_factor: 1,
        ..Default::default()
    };
    client.admin().create_topic("spread", spread).await.unwrap();
    aggs.create(AggregationSpec {
        name: "spread-count".into(),
        topic: "spread".into(),
        measures: vec!["count".into()],
        ..spec
    })
    .await
    .unwrap();
    wait_running(&aggs, "spread-count", 3).await;
    let producer = client.producer().build();
    for i in 0..300u64 {
        let value = format!(r#"{{"t":{},"device":"d{}"}}"#, base + 10 * i as i64, i % 3);
        producer
            .send_and_wait(ProducerRecord::new("spread", value).partition((i % 3) as u32))
            .await
            .unwrap();
    }
    for node in 1..=3 {
        let c = cluster.client_of(node).await;
        eventually(
            Duration::from_secs(20),
            "every node to count all",
            async || {
                let r = c
                    .aggregations()
                    .query("spread-count", None, None, &[])
                    .await
                    .ok()?;
                let total: f64 = r.rows.iter().filter_map(|row| row.values[0].value).sum();
                (total == 300.0).then_some(())
            },
        )
        .await;
    }
}

// ---- Search ----

/// One generated event, as the brute-force side sees it.
#[derive(Debug, Clone)]
struct Event {
    topic: &'static str,
    n: u64,
    ts: i64,
    level: &'static str,
    service: &'static str,
    msg: String,
    temperature: f64,
}

fn search_events(topic: &'static str, count: u64, first: u64, base: i64) -> Vec<Event> {
    const LEVELS: [&str; 3] = ["info", "warn", "error"];
    const SERVICES: [&str; 3] = ["checkout", "search", "auth"];
    (first..first + count)
        .map(|n| Event {
            topic,
            n,
            ts: base + n as i64 * 10,
            level: LEVELS[(n % 3) as usize],
            service: SERVICES[(n / 3 % 3) as usize],
            msg: format!("request {n} handled by node-{}", n % 5),
            // Whole numbers and fractions under one field, as real feeds have.
            temperature: (n % 50) as f64 + if n % 4 == 0 { 0.5 } else { 0.0 },
        })
        .collect()
}

fn event_json(e: &Event) -> String {
    let t = if e.temperature.fract() == 0.0 {
        format!("{}", e.temperature as i64)
    } else {
        format!("{}", e.temperature)
    };
    format!(
        r#"{{"n":{},"level":"{}","service":"{}","msg":"{}","temperature":{t},"http":{{"status":{}}}}}"#,
        e.n,
        e.level,
        e.service,
        e.msg,
        if e.n.is_multiple_of(7) { 500 } else { 200 }
    )
}

/// Produces `events` (keyed by user), pausing `pace` after every 100 sends; returns the `n`
/// of every acknowledged one.
async fn produce_events(
    client: &strata_client::Client,
    events: &[Event],
    pace: Duration,
) -> Vec<u64> {
    let producer = client
        .producer()
        .linger(Duration::from_millis(2))
        .retries(100)
        .retry_backoff(Duration::from_millis(50))
        .build();
    let mut acks = Vec::new();
    for e in events {
        let record = ProducerRecord::new(e.topic, event_json(e))
            .key(format!("user-{}", e.n % 20))
            .timestamp(e.ts);
        acks.push((e.n, producer.send(record).await.unwrap()));
        if e.n % 100 == 99 && !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
    }
    let mut acked = Vec::new();
    for (n, ack) in acks {
        if ack.await.is_ok() {
            acked.push(n);
        }
    }
    acked
}

/// Produces `events` without faults: every one must be acknowledged.
async fn produce_all(client: &strata_client::Client, events: &[Event]) {
    let acked = produce_events(client, events, Duration::ZERO).await;
    assert_eq!(acked.len(), events.len(), "every event acknowledged");
}

fn is_invalid(e: &strata_client::Error) -> bool {
    e.to_string().contains("INVALID_ARGUMENT")
}

/// t50: search results equal a brute-force filter over the same events (term, phrase,
/// numeric range, boolean, key and time-range queries, across partitions and topics); order,
/// limits, counts and histograms agree; an acknowledged event is found by waiting on a
/// condition; malformed and hostile queries are refused or answered correctly and the nodes
/// keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_search_equals_brute_force() {
    use strata_client::{SearchOrder, SearchQuery};
    let cluster = TestCluster::start(NODE, 3, |_| {}).await;
    let client = cluster.client().await;
    let admin = client.admin();
    admin.create_topic("app-logs", rf3(3)).await.unwrap();
    admin.create_topic("edge-logs", rf3(2)).await.unwrap();
    admin
        .create_topic(
            "unindexed",
            TopicSpec {
                search_disabled: true,
                ..rf3(1)
            },
        )
        .await
        .unwrap();
    let base = 1_700_000_000_000;
    let mut events = search_events("app-logs", 1200, 0, base);
    events.extend(search_events("edge-logs", 600, 1200, base));
    produce_all(&client, &events).await;
    let search = client.search();
    let total = events.len() as u64;
    eventually(Duration::from_secs(30), "every event indexed", async || {
        let r = search.run(SearchQuery::new("*").count_only()).await.ok()?;
        (r.total == total).then_some(())
    })
    .await;

    type Case = (
        &'static str,
        Option<(i64, i64)>,
        Box<dyn Fn(&Event) -> bool>,
    );
    let mid = base + 9_000;
    let cases: Vec<Case> = vec![
        ("level:error", None, Box::new(|e| e.level == "error")),
        (
            "level:error AND service:checkout",
            None,
            Box::new(|e| e.level == "error" && e.service == "checkout"),
        ),
        (
            "level:warn OR service:auth",
            None,
            Box::new(|e| e.level == "warn" || e.service == "auth"),
        ),
        ("NOT level:info", None, Box::new(|e| e.level != "info")),
        (
            "service:search AND NOT (level:info OR level:warn)",
            None,
            Box::new(|e| e.service == "search" && e.level == "error"),
        ),
        (
            "msg:\"handled by node-3\"",
            None,
            Box::new(|e| e.n % 5 == 3),
        ),
        ("node-3", None, Box::new(|e| e.n % 5 == 3)),
        (
            "temperature:[30 TO *]",
            None,
            Box::new(|e| e.temperature >= 30.0),
        ),
        (
            "temperature:[30.5 TO 31]",
            None,
            Box::new(|e| (30.5..=31.0).contains(&e.temperature)),
        ),
        (
            "temperature:{10 TO 20.5}",
            None,
            Box::new(|e| e.temperature > 10.0 && e.temperature < 20.5),
        ),
        (
            "temperature:>=45 AND level:warn",
            None,
            Box::new(|e| e.temperature >= 45.0 && e.level == "warn"),
        ),
        ("http.status:500", None, Box::new(|e| e.n.is_multiple_of(7))),
        ("key:user-7", None, Box::new(|e| e.n % 20 == 7)),
        (
            "level:error",
            Some((base + 3_000, mid)),
            Box::new(move |e| e.level == "error" && e.ts >= base + 3_000 && e.ts < mid),
        ),
        (
            "*",
            Some((mid, base + 100_000)),
            Box::new(move |e| e.ts >= mid),
        ),
        ("nosuchfield:x", None, Box::new(|_| false)),
    ];
    for (query, range, pred) in &cases {
        let mut q = SearchQuery::new(*query).limit(10_000);
        if let Some((from, to)) = range {
            q = q.from_ms(*from).to_ms(*to);
        }
        let r = search
            .run(q)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        let expected: Vec<u64> = events.iter().filter(|e| pred(e)).map(|e| e.n).collect();
        assert_eq!(r.total, expected.len() as u64, "{query} {range:?}: total");
        assert_eq!(hit_numbers(&r.hits), expected, "{query} {range:?}: hits");
        assert_eq!(r.partitions, 5, "{query}: partitions searched");
    }

    // One topic only; ordering and limits; counts and histograms.
    let r = search
        .run(
            SearchQuery::new("level:error")
                .topic("edge-logs")
                .limit(10_000),
        )
        .await
        .unwrap();
    let expected: Vec<u64> = events
        .iter()
        .filter(|e| e.topic == "edge-logs" && e.level == "error")
        .map(|e| e.n)
        .collect();
    assert_eq!(hit_numbers(&r.hits), expected);
    assert!(r.hits.iter().all(|h| h.topic == "edge-logs"));
    let newest = search
        .run(SearchQuery::new("service:auth").limit(25))
        .await
        .unwrap();
    let mut auth: Vec<&Event> = events.iter().filter(|e| e.service == "auth").collect();
    auth.sort_by_key(|e| std::cmp::Reverse(e.ts));
    let want: Vec<i64> = auth.iter().take(25).map(|e| e.ts).collect();
    let got: Vec<i64> = newest.hits.iter().map(|h| h.timestamp_ms).collect();
    assert_eq!(got, want, "newest first");
    let oldest = search
        .run(
            SearchQuery::new("service:auth")
                .limit(5)
                .order(SearchOrder::TimeAsc),
        )
        .await
        .unwrap();
    let got: Vec<i64> = oldest.hits.iter().map(|h| h.timestamp_ms).collect();
    let want: Vec<i64> = auth.iter().rev().take(5).map(|e| e.ts).collect();
    assert_eq!(got, want, "oldest first");
    let scored = search
        .run(
            SearchQuery::new("node-3 OR level:error")
                .order(SearchOrder::Score)
                .limit(50),
        )
        .await
        .unwrap();
    assert!(scored.hits.windows(2).all(|w| w[0].score >= w[1].score));
    assert!(scored.hits.iter().all(|h| h.score > 0.0));
    let counted = search
        .run(
            SearchQuery::new("level:warn")
                .count_only()
                .histogram_ms(1_000)
                .from_ms(base)
                .to_ms(base + 20_000),
        )
        .await
        .unwrap();
    assert!(counted.hits.is_empty());
    let mut want: BTreeMap<i64, u64> = BTreeMap::new();
    for e in events.iter().filter(|e| e.level == "warn") {
        *want
            .entry(e.ts - (e.ts - base).rem_euclid(1_000))
            .or_default() += 1;
    }
    let got: BTreeMap<i64, u64> = counted
        .histogram
        .iter()
        .map(|b| (b.start_ms, b.count))
        .collect();
    assert_eq!(got, want, "histogram");
    assert_eq!(counted.total, want.values().sum::<u64>());

    // Bad input: refused with a message, or answered correctly; nothing stops a node.
    for (query, says) in [
        ("level:(error", "position"),
        ("((((", "parse"),
        ("[1 TO 2]", "range needs a field"),
        ("offset:abc", "invalid query"),
    ] {
        let e = search.run(SearchQuery::new(query)).await.unwrap_err();
        assert!(
            is_invalid(&e) && e.to_string().contains(says),
            "{query}: {e}"
        );
    }
    let deep = format!("{}a{}", "(".repeat(5_000), ")".repeat(5_000));
    let hostile = [
        deep.as_str(),
        "temperature:[30.5 TO 31.0]",
        "temperature:[abc TO 31]",
        "level:[a TO z]",
        "timestamp:[2023-11-14T22:13:20Z TO 2023-11-14T22:13:30Z}",
        "\"unterminated",
        "a AND",
        "OR OR",
        "temperature:/3.*/",
        "*:*",
        "level:*",
        "http.status: IN [500 404]",
    ];
    for query in hostile {
        match search.run(SearchQuery::new(query).limit(10_000)).await {
            Ok(_) => {}
            Err(e) => assert!(is_invalid(&e), "{query}: {e}"),
        }
    }
    let r = search
        .run(SearchQuery::new("temperature:[30.5 TO 31.0]").limit(10_000))
        .await
        .unwrap();
    let expected: Vec<u64> = events
        .iter()
        .filter(|e| (30.5..=31.0).contains(&e.temperature))
        .map(|e| e.n)
        .collect();
    assert_eq!(hit_numbers(&r.hits), expected, "mixed-type range");
    for (q, says) in [
        (SearchQuery::new("*").topic("unindexed"), "not indexed"),
        (SearchQuery::new("*").topic("nope"), "unknown topic"),
        (SearchQuery::new("*").limit(20_000), "limit"),
        (
            SearchQuery::new("*").from_ms(5).to_ms(5),
            "time range is empty",
        ),
    ] {
        let e = search.run(q).await.unwrap_err();
        assert!(e.to_string().contains(says), "{says}: {e}");
    }
    for node in &cluster.nodes {
        let r = cluster
            .client_of(node.id)
            .await
            .search()
            .run(SearchQuery::new("*").count_only())
            .await
            .unwrap();
        assert_eq!(r.total, total, "node {} still serves", node.id);
    }

    // Freshness: an acknowledged event is found by waiting for it (the delay is a benchmark
    // figure, not asserted).
    let needle = Event {
        msg: "needle in the haystack".into(),
        ..search_events("app-logs", 1, 99_999, base).remove(0)
    };
    let started = std::time::Instant::now();
    produce_all(&client, std::slice::from_ref(&needle)).await;
    let acked = started.elapsed();
    eventually(
        Duration::from_secs(10),
        "the new event to be found",
        async || {
            let r = search
                .run(SearchQuery::new("msg:\"needle in the haystack\""))
                .await
                .ok()?;
            (r.total == 1 && hit_numbers(&r.hits) == [99_999]).then_some(())
        },
    )
    .await;
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "t50: acknowledged after {acked:?}, searchable after {:?}",
            started.elapsed()
        );
    }
}

/// Searches one node's replicas of `partitions` as they are (the internal form of the
/// request a node sends to another).
async fn replica_search(
    address: std::net::SocketAddr,
    topic: &str,
    partitions: &[u32],
) -> Option<strata_proto::v1::SearchResponse> {
    use strata_proto::v1;
    let mut rpc = v1::search_client::SearchClient::connect(format!("http://{address}"))
        .await
        .ok()?;
    rpc.search(v1::SearchRequest {
        query: "*".into(),
        limit: 10_000,
        partitions: partitions
            .iter()
            .map(|p| v1::SearchPartition {
                topic: topic.into(),
                partition: *p,
            })
            .collect(),
        ..Default::default()
    })
    .await
    .ok()
    .map(tonic::Response::into_inner)
}

/// t51: a node killed while it indexes resumes where its index's last commit stopped, and an
/// index directory deleted while its node is down is rebuilt from the log: afterwards every
/// replica's index holds each record of its log exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t51_indexes_survive_kills_and_are_rebuilt_from_the_log() {
    let mut cluster = TestCluster::start(NODE, 3, |_| {}).await;
    let client = cluster.client().await;
    client
        .admin()
        .create_topic("indexed", rf3(2))
        .await
        .unwrap();
    let base = 1_700_000_000_000;
    let events = search_events("indexed", 3000, 0, base);
    // Acknowledgements may fail while no majority is up; what the log holds is the reference.
    let producing = {
        let client = cluster.client().await;
        let events = events.clone();
        tokio::spawn(
            async move { produce_events(&client, &events, Duration::from_millis(5)).await },
        )
    };
    // Kill the leader of partition 0 once it has indexed part of the stream.
    let victim = cluster.leader_of("indexed", 0).await;
    let victim_address = cluster.node(victim).address;
    eventually(Duration::from_secs(30), "indexing under way", async || {
        let r = replica_search(victim_address, "indexed", &[0, 1]).await?;
        (r.total >= 300).then_some(())
    })
    .await;
    cluster.kill(victim);
    // With that leader dead, each other node still answers for both partitions (the dead
    // node's share from a replica of its own or another).
    for node in cluster.nodes.iter().filter(|n| n.id != victim) {
        let r = cluster
            .client_of(node.id)
            .await
            .search()
            .run(strata_client::SearchQuery::new("*").count_only())
            .await
            .unwrap();
        assert_eq!(r.partitions, 2, "node {}", node.id);
        assert!(r.total > 0, "node {}", node.id);
    }
    // Another node loses its index directories while it is down.
    let other = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|id| *id != victim)
        .unwrap();
    cluster.stop(other);
    for p in 0..2 {
        for (node, dir) in cluster.replica_dirs("indexed", p) {
            if node == other {
                std::fs::remove_dir_all(dir.join("search")).unwrap();
            }
        }
    }
    cluster.restart(other).await;
    cluster.restart(victim).await;
    let acked = producing.await.unwrap();
    // The log's records, read back in full (the leaders' high watermarks are final now).
    let mut ends = [0u64; 2];
    for node in &cluster.nodes {
        let t = cluster
            .client_of(node.id)
            .await
            .admin()
            .describe_topic("indexed")
            .await
            .unwrap();
        for p in &t.partitions {
            ends[p.partition as usize] = ends[p.partition as usize].max(p.high_watermark);
        }
    }
    let mut consumer = reader(&client, "indexed", [0, 1], StartAt::Earliest).await;
    let mut log_numbers = Vec::new();
    for _ in 0..ends.iter().sum::<u64>() {
        let r = next_record(&mut consumer).await;
        let v: serde_json::Value = serde_json::from_slice(r.value.as_ref().unwrap()).unwrap();
        log_numbers.push(v["n"].as_u64().unwrap());
    }
    log_numbers.sort_unstable();
    for n in &acked {
        assert!(
            log_numbers.binary_search(n).is_ok(),
            "acknowledged {n} lost"
        );
    }
    // Every replica's index ends up equal to its log: each record exactly once.
    for node in &cluster.nodes {
        let address = node.address;
        let r = eventually(
            Duration::from_secs(60),
            "replica indexes caught up",
            async || {
                let r = replica_search(address, "indexed", &[0, 1]).await?;
                (r.total >= events.len() as u64 && r.not_indexed == 0).then_some(r)
            },
        )
        .await;
        assert_eq!(r.total, events.len() as u64, "node {}: total", node.id);
        let hits: Vec<strata_client::SearchHit> = r.hits;
        assert_eq!(hit_numbers(&hits), log_numbers, "node {}: hits", node.id);
    }
    // The leaders answer the merged search the same way.
    let r = client
        .search()
        .run(strata_client::SearchQuery::new("*").count_only())
        .await
        .unwrap();
    assert_eq!(r.total, log_numbers.len() as u64);
}
