//! Multi-node tests: three `strata-test-node` processes on loopback, Raft traffic through
//! proxies the tests cut, nodes killed with SIGKILL.

use std::collections::BTreeMap;
use std::time::Duration;

use strata_client::{ProducerRecord, StartAt, TopicSpec};
use strata_tests::cluster::{TestCluster, read_log};
use strata_tests::{eventually, next_record, reader};

const NODE: &str = env!("CARGO_BIN_EXE_strata-test-node");

fn rf3(partitions: u32) -> TopicSpec {
    TopicSpec {
        partitions,
        replication_factor: 3,
        retention_ms: None,
        retention_bytes: None,
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
    let topic = client.admin().describe_topic("same").await.unwrap();
    // Leaders start on the preferred replicas, one per node.
    let leaders: std::collections::BTreeSet<u64> =
        topic.partitions.iter().map(|p| p.leader).collect();
    assert_eq!(leaders.len(), 3, "leaders spread: {:?}", topic.partitions);

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
    for id in 1..=3 {
        cluster.stop(id);
    }
    for p in 0..3 {
        let replicas = cluster.replica_dirs("same", p);
        assert_eq!(replicas.len(), 3);
        let logs: Vec<_> = replicas.iter().map(|(_, dir)| read_log(dir)).collect();
        let records: usize = logs[0].iter().filter(|(_, body)| !body.is_empty()).count();
        assert!(records > 0);
        for (i, log) in logs.iter().enumerate().skip(1) {
            assert_eq!(
                log.len(),
                logs[0].len(),
                "replica {} of partition {p}",
                replicas[i].0
            );
            assert!(
                *log == logs[0],
                "replica {} of partition {p} differs",
                replicas[i].0
            );
        }
    }
}
