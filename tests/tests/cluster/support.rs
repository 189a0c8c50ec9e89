//! Helpers shared by the areas: topics with three replicas, producing numbered records
//! and reading them back, the raw produce API, comparing every replica's log.

use std::time::Duration;

use strata_client::{ProducerRecord, StartAt, TopicSpec};
use strata_tests::cluster::{TestCluster, read_log};
use strata_tests::{eventually, next_record, reader};

pub(crate) const NODE: &str = env!("CARGO_BIN_EXE_strata-test-node");

pub(crate) fn rf3(partitions: u32) -> TopicSpec {
    TopicSpec {
        partitions,
        replication_factor: 3,
        ..TopicSpec::default()
    }
}

/// Waits until every node's replica of every partition has committed `per_partition`
/// records.
pub(crate) async fn wait_replicated(
    cluster: &TestCluster,
    topic: &str,
    partitions: u32,
    per_partition: u64,
) {
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

/// Produces `count` records numbered from 0 to partition 0 of `topic` in the background,
/// recording which were acknowledged.
pub(crate) fn spawn_numbered_producer(
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
pub(crate) async fn read_values(client: &strata_client::Client, topic: &str, n: usize) -> Vec<u64> {
    read_strings(client, topic, n)
        .await
        .iter()
        .map(|v| v.parse().unwrap())
        .collect()
}

/// The first value stored twice, if any.
pub(crate) fn first_duplicate(values: &[u64]) -> Option<u64> {
    let mut seen = std::collections::BTreeSet::new();
    values.iter().copied().find(|v| !seen.insert(*v))
}

/// Prints every replica's log of partition 0 (log id, producer id/epoch/sequence, base
/// offset, first value), to diagnose a failed check.
#[allow(clippy::print_stdout)]
pub(crate) async fn dump_logs(cluster: &mut TestCluster, topic: &str) {
    let topic_id = cluster.topic_id(topic).await;
    for id in 1..=cluster.nodes.len() as u64 {
        cluster.stop(id);
    }
    if let Ok(keep) = std::env::var("STRATA_KEEP_NODE_LOGS") {
        for node in &cluster.nodes {
            let to = std::path::Path::new(&keep).join(format!("node-{}.log", node.id));
            let _ = std::fs::copy(node.log_path(), to);
        }
    }
    for (node, dir) in cluster.replica_dirs(topic_id, 0) {
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
pub(crate) async fn read_strings(
    client: &strata_client::Client,
    topic: &str,
    n: usize,
) -> Vec<String> {
    let mut consumer = reader(client, topic, [0], StartAt::Earliest).await;
    let mut values = Vec::with_capacity(n);
    while values.len() < n {
        let r = next_record(&mut consumer).await;
        values.push(String::from_utf8_lossy(r.value.as_deref().unwrap()).into_owned());
    }
    values
}

/// Every acknowledged value appears exactly once, and values appear in send order.
pub(crate) fn check_acknowledged(values: &[u64], acked: &[u64]) {
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

/// Stops every node and checks that each partition's replicas hold the same entries. A
/// replica may end with an extra entry without records: a leader elected while the others
/// were being stopped writes a blank entry that a stopped node never received.
pub(crate) async fn assert_same_logs(cluster: &mut TestCluster, topic: &str, partitions: u32) {
    let topic_id = cluster.topic_id(topic).await;
    for id in 1..=cluster.nodes.len() as u64 {
        cluster.stop(id);
    }
    for p in 0..partitions {
        let replicas = cluster.replica_dirs(topic_id, p);
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
pub(crate) fn assert_logs_agree(
    logs: &[Vec<(strata_storage::LogId, bytes::Bytes)>],
    names: &[String],
) {
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
pub(crate) fn batch(value: &str, producer: Option<(i64, i16, i32)>) -> bytes::Bytes {
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
pub(crate) async fn init_producer(address: std::net::SocketAddr) -> (i64, i16) {
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
pub(crate) async fn raw_produce(
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

/// Sends a batch to the partition's leader with the raw API, following leadership while it
/// moves (an election, or the balancer handing it to the preferred replica): the answer
/// that is not NOT_LEADER/UNAVAILABLE.
pub(crate) async fn produce_to_leader(
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
