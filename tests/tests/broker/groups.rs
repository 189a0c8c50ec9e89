//! t10–t19: consumer groups, restarts, retention.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use strata_client::{Consumer, ConsumerRecord, ProducerRecord, StartAt, TopicSpec};
use strata_tests::{TestBroker, eventually, next_record, reader};

use super::{WAIT, http_get, produce_to_each};

/// A consumer driven by its own task, so a test can ask for its assignment, make it commit
/// or close it while it keeps consuming.
struct Member {
    commands: tokio::sync::mpsc::Sender<Command>,
    records: std::sync::Arc<std::sync::Mutex<Vec<ConsumerRecord>>>,
}

enum Command {
    Assignment(tokio::sync::oneshot::Sender<Vec<(String, u32)>>),
    Positions(tokio::sync::oneshot::Sender<Vec<Option<u64>>>),
    Commit(tokio::sync::oneshot::Sender<()>),
    Close(tokio::sync::oneshot::Sender<()>),
}

impl Member {
    fn spawn(mut consumer: Consumer) -> Member {
        let (commands, mut rx) = tokio::sync::mpsc::channel(4);
        let records = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = records.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    record = consumer.next() => match record {
                        Some(Ok(r)) => sink.lock().unwrap().push(r),
                        Some(Err(e)) => panic!("consumer error: {e}"),
                        None => return,
                    },
                    command = rx.recv() => match command {
                        Some(Command::Assignment(tx)) => { let _ = tx.send(consumer.assignment()); }
                        Some(Command::Positions(tx)) => {
                            let positions = consumer.assignment().iter().map(|(t, p)| consumer.position(t, *p)).collect();
                            let _ = tx.send(positions);
                        }
                        Some(Command::Commit(tx)) => { consumer.commit().await.unwrap(); let _ = tx.send(()); }
                        Some(Command::Close(tx)) => { consumer.close().await.unwrap(); let _ = tx.send(()); return; }
                        None => return,
                    },
                }
            }
        });
        Member { commands, records }
    }

    async fn assignment(&self) -> Vec<(String, u32)> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands.send(Command::Assignment(tx)).await.unwrap();
        let mut a = rx.await.unwrap();
        a.sort();
        a
    }

    /// Whether every assigned partition has been consumed up to `offset`.
    async fn caught_up(&self, offset: u64) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands.send(Command::Positions(tx)).await.unwrap();
        let positions = rx.await.unwrap();
        !positions.is_empty() && positions.iter().all(|p| *p == Some(offset))
    }

    async fn commit(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands.send(Command::Commit(tx)).await.unwrap();
        rx.await.unwrap();
    }

    async fn close(self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands.send(Command::Close(tx)).await.unwrap();
        rx.await.unwrap();
    }

    fn count(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    fn take(&self) -> Vec<ConsumerRecord> {
        std::mem::take(&mut *self.records.lock().unwrap())
    }
}

/// Waits until the members' assignments are disjoint, cover `partitions` partitions of
/// `topic` and give each member `per_member` of them.
async fn wait_for_split(members: &[&Member], topic: &str, partitions: u32, per_member: &[usize]) {
    eventually(WAIT, "the group to settle", async || {
        let mut all = Vec::new();
        let mut sizes = Vec::new();
        for m in members {
            let a = m.assignment().await;
            sizes.push(a.len());
            all.extend(a);
        }
        all.sort();
        let expected: Vec<(String, u32)> =
            (0..partitions).map(|p| (topic.to_string(), p)).collect();
        sizes.sort_unstable();
        let mut want = per_member.to_vec();
        want.sort_unstable();
        (all == expected && sizes == want).then_some(())
    })
    .await;
}

/// The (partition, offset) of records, sorted, with a check that none repeats.
fn unique_positions(records: &[ConsumerRecord]) -> Vec<(u32, u64)> {
    let mut positions: Vec<(u32, u64)> = records.iter().map(|r| (r.partition, r.offset)).collect();
    positions.sort_unstable();
    let before = positions.len();
    positions.dedup();
    assert_eq!(before, positions.len(), "a record was delivered twice");
    positions
}

/// t10: three members split six partitions; when one leaves its partitions move to the
/// others; after a broker restart the group resumes from its committed offsets, losing and
/// repeating nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_group_splits_rebalances_and_resumes_after_restart() {
    let mut broker = TestBroker::start().await;
    let client = broker.client_with_topic("orders", 6).await;
    let producer = client.producer().build();
    produce_to_each(&producer, "orders", 6, 100, "a").await;

    let member = async || {
        let consumer = client
            .consumer()
            .group("billing")
            .topic("orders")
            .start_at(StartAt::Earliest)
            .auto_commit(None)
            .session_timeout(Duration::from_secs(10))
            .build()
            .await
            .unwrap();
        Member::spawn(consumer)
    };
    let (a, b, c) = (member().await, member().await, member().await);
    wait_for_split(&[&a, &b, &c], "orders", 6, &[2, 2, 2]).await;
    for m in [&a, &b, &c] {
        eventually(WAIT, "each member to read its partitions", async || {
            m.caught_up(100).await.then_some(())
        })
        .await;
    }
    // Each member commits what it has read. On a loaded machine a member's stall can still
    // set off a rebalance in between (it then reads its partitions again and commits them
    // on the next round), so this repeats until every partition is committed at 100.
    eventually(WAIT, "every partition to be committed at 100", async || {
        for m in [&a, &b, &c] {
            if m.caught_up(100).await {
                m.commit().await;
            }
        }
        let committed = client.admin().committed_offsets("billing").await.ok()?;
        (committed.len() == 6 && committed.iter().all(|(_, _, o)| *o == 100)).then_some(())
    })
    .await;
    // Records delivered during an early rebalance may repeat (at least once); each member
    // ends up with its own partitions.
    let first: Vec<ConsumerRecord> = [&a, &b, &c].iter().flat_map(|m| m.take()).collect();
    let mut positions: Vec<(u32, u64)> = first.iter().map(|r| (r.partition, r.offset)).collect();
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(
        positions.len(),
        600,
        "every record of the first round was read"
    );

    // c leaves: a and b take over its partitions from its committed offsets.
    c.close().await;
    wait_for_split(&[&a, &b], "orders", 6, &[3, 3]).await;
    produce_to_each(&producer, "orders", 6, 10, "b").await;
    eventually(WAIT, "the 60 new records", async || {
        (a.count() + b.count() >= 60).then_some(())
    })
    .await;
    let second: Vec<ConsumerRecord> = [&a, &b].iter().flat_map(|m| m.take()).collect();
    let positions = unique_positions(&second);
    if positions.len() != 60 {
        let mut per: BTreeMap<u32, (u64, u64, usize)> = BTreeMap::new();
        for (p, o) in &positions {
            let e = per.entry(*p).or_insert((u64::MAX, 0, 0));
            e.0 = e.0.min(*o);
            e.1 = e.1.max(*o);
            e.2 += 1;
        }
        let committed = client.admin().committed_offsets("billing").await.unwrap();
        panic!(
            "re-read: per partition (min, max, count) {per:?}; committed {committed:?}; a {:?} b {:?}",
            a.assignment().await,
            b.assignment().await
        );
    }
    assert_eq!(positions.len(), 60);
    assert!(
        positions.iter().all(|(_, o)| (100..110).contains(o)),
        "only new records, from c's committed offsets on"
    );
    a.commit().await;
    b.commit().await;

    // The broker restarts; the members rejoin and go on from the committed offsets.
    broker.restart().await;
    wait_for_split(&[&a, &b], "orders", 6, &[3, 3]).await;
    produce_to_each(&producer, "orders", 6, 5, "c").await;
    eventually(WAIT, "the 30 records after the restart", async || {
        (a.count() + b.count() >= 30).then_some(())
    })
    .await;
    let third: Vec<ConsumerRecord> = [&a, &b].iter().flat_map(|m| m.take()).collect();
    let positions = unique_positions(&third);
    assert_eq!(positions.len(), 30);
    assert!(
        positions.iter().all(|(_, o)| (110..115).contains(o)),
        "resumed exactly at the committed offsets: {positions:?}"
    );
    let offsets = client.admin().committed_offsets("billing").await.unwrap();
    assert_eq!(offsets.len(), 6);
    a.close().await;
    b.close().await;
}

/// t11: a restart keeps topics, their settings and their data; a second node cannot open
/// a data directory in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t11_restart_keeps_topics_and_data() {
    let mut broker = TestBroker::start().await;
    let client = broker.client().await;
    let spec = TopicSpec {
        partitions: 3,
        replication_factor: 1,
        retention_ms: Some(86_400_000),
        retention_bytes: Some(1 << 30),
        search_disabled: false,
        search_fields: vec!["level".into(), "http.status".into()],
    };
    client
        .admin()
        .create_topic("kept", spec.clone())
        .await
        .unwrap();
    let producer = client.producer().build();
    produce_to_each(&producer, "kept", 3, 50, "x").await;
    broker.restart().await;
    let client = broker.client().await;
    let topic = client.admin().describe_topic("kept").await.unwrap();
    assert_eq!(topic.spec, spec);
    assert!(topic.partitions.iter().all(|p| p.high_watermark == 50));
    let mut consumer = reader(&client, "kept", 0..3, StartAt::Earliest).await;
    let mut values = Vec::new();
    while values.len() < 150 {
        let r = next_record(&mut consumer).await;
        values.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
    }
    values.sort();
    let mut want: Vec<String> = (0..3)
        .flat_map(|p| (0..50).map(move |i| format!("x-{p}-{i}")))
        .collect();
    want.sort();
    assert_eq!(values, want);
    // And it keeps taking writes.
    let meta = producer
        .send_and_wait(ProducerRecord::new("kept", "after").partition(0))
        .await
        .unwrap();
    assert_eq!(meta.offset, 50);
    let second = strata_broker::Broker::start(strata_broker::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peer_listen: "127.0.0.1:0".parse().unwrap(),
        http: None,
        data_dir: broker.data_dir().to_path_buf(),
        ..Default::default()
    })
    .await;
    let Err(e) = second else {
        panic!("a second node opened a data directory in use")
    };
    assert!(e.to_string().contains("in use by another node"), "{e}");
}

/// t12: retention deletes the search documents of the records it removes: search never
/// returns them, the index drops them at its next commit, and what remains is searchable
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t12_retention_removes_search_documents() {
    use strata_client::SearchQuery;
    let broker = TestBroker::start_with(|c| {
        c.http = Some("127.0.0.1:0".parse().unwrap());
        c.segment_bytes = 256 << 10;
        c.max_batch_bytes = 64 << 10;
        c.retention_check_ms = 100;
    })
    .await;
    let http = broker.http_address().unwrap();
    let client = broker.client().await;
    let spec = TopicSpec {
        partitions: 1,
        replication_factor: 1,
        retention_bytes: Some(512 << 10),
        ..TopicSpec::default()
    };
    client.admin().create_topic("short", spec).await.unwrap();
    let producer = client.producer().batch_bytes(32 << 10).build();
    let pad = "x".repeat(1000);
    let mut acks = Vec::new();
    for n in 0..3000 {
        let value = format!(r#"{{"n":{n},"pad":"{pad}"}}"#);
        acks.push(
            producer
                .send(ProducerRecord::new("short", value))
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
    // Retention deletes one segment after another; check once it is done (the partition
    // within its limit), so that no purge runs between counting hits and reading them.
    let (start, end) = eventually(WAIT, "retention to delete segments", async || {
        let t = client.admin().describe_topic("short").await.ok()?;
        let p = &t.partitions[0];
        (p.start_offset > 0 && p.high_watermark == 3000 && p.bytes <= 512 << 10)
            .then_some((p.start_offset, p.high_watermark))
    })
    .await;
    let search = client.search();
    let r = eventually(WAIT, "the rest to be searchable", async || {
        let r = search.run(SearchQuery::new("*").limit(10_000)).await.ok()?;
        (r.not_indexed == 0).then_some(r)
    })
    .await;
    let ns = strata_tests::hit_numbers(&r.hits);
    // One partition without control records: offset n holds event n. Retention may have
    // moved on since `start` was read, never back.
    let first = ns.first().copied().unwrap();
    assert!(
        first >= start,
        "a deleted record was returned: {first} < {start}"
    );
    assert_eq!(ns, (first..end).collect::<Vec<_>>());
    assert_eq!(r.total, end - first);
    let documents = eventually(WAIT, "the index to drop deleted records", async || {
        let t = client.admin().describe_topic("short").await.ok()?;
        let live = t.partitions[0].high_watermark - t.partitions[0].start_offset;
        let (_, metrics) = http_get(http, "/metrics").await;
        let line = format!("strata_search_documents{{topic=\"short\",partition=\"0\"}} {live}\n");
        metrics.contains(&line).then_some(live)
    })
    .await;
    assert!(documents < 3000);
}

/// t13: topic directories are named by the topic's id, never by the name a client chose; a
/// directory of the older `<name>-<id>` layout is renamed when the node starts, with its
/// data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t13_topic_directories_are_named_by_id_and_older_ones_are_renamed() {
    let mut broker = TestBroker::start().await;
    let client = broker.client_with_topic("named", 1).await;
    let id = client.admin().describe_topic("named").await.unwrap().id;
    let producer = client.producer().build();
    produce_to_each(&producer, "named", 1, 20, "x").await;
    let topics = broker.data_dir().join("topics");
    assert!(topics.join(id.to_string()).join("0").is_dir());
    broker.stop().await;
    std::fs::rename(
        topics.join(id.to_string()),
        topics.join(format!("named-{id}")),
    )
    .unwrap();
    broker.restart().await;
    assert!(topics.join(id.to_string()).join("0").is_dir());
    assert!(!topics.join(format!("named-{id}")).exists());
    let client = broker.client().await;
    let t = client.admin().describe_topic("named").await.unwrap();
    assert_eq!(t.partitions[0].high_watermark, 20);
}
