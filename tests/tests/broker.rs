//! A single broker over real gRPC on loopback, driven by the real client.
//!
//! Numbered cases: t01–t09 produce and consume, t10–t19 consumer groups and restarts,
//! t20–t29 bad input.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use strata_client::{
    Acks, Consumer, ConsumerRecord, ErrorCode, ProducerRecord, StartAt, TopicSpec,
};
use strata_proto::v1;
use strata_tests::{TestBroker, eventually, next_record, reader};

const WAIT: Duration = Duration::from_secs(30);

/// t01: 100k records over 8 partitions come back exactly once each, in per-partition order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_100k_records_round_trip_in_partition_order() {
    let broker = TestBroker::start().await;
    let client = broker.client_with_topic("events", 8).await;
    let producer = client
        .producer()
        .linger(Duration::from_millis(2))
        .batch_bytes(256 * 1024)
        .build();
    let total = 100_000u64;
    let mut deliveries = Vec::with_capacity(total as usize);
    for i in 0..total {
        let record = ProducerRecord::new("events", format!("{{\"seq\":{i}}}"))
            .key(format!("key-{}", i % 1000));
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await.unwrap();
    let mut acked: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for d in deliveries {
        let meta = d.await.unwrap();
        acked.entry(meta.partition).or_default().push(meta.offset);
    }
    assert_eq!(acked.values().map(Vec::len).sum::<usize>(), total as usize);
    assert_eq!(acked.len(), 8, "keys spread over every partition");

    let mut consumer = reader(&client, "events", 0..8, StartAt::Earliest).await;
    let mut seen: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    let mut count = 0;
    while count < total {
        let record = tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("records keep coming")
            .unwrap()
            .unwrap();
        let value: serde_json_lite::Value = serde_json_lite::parse(record.value.as_ref().unwrap());
        seen.entry(record.partition)
            .or_default()
            .push((record.offset, value.seq));
        count += 1;
    }
    for (partition, records) in &seen {
        // Offsets are dense from 0 and sequence numbers rise within a partition.
        assert!(
            records.iter().enumerate().all(|(i, (o, _))| *o == i as u64),
            "partition {partition} offsets"
        );
        assert!(
            records.windows(2).all(|w| w[0].1 < w[1].1),
            "partition {partition} order"
        );
        assert_eq!(
            records.iter().map(|r| r.0).collect::<Vec<_>>(),
            acked[partition]
        );
    }
    let mut all: Vec<u64> = seen.values().flatten().map(|r| r.1).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..total).collect::<Vec<_>>(),
        "every record exactly once"
    );
}

/// A tiny parser for the `{"seq":N}` values above (keeps the test free of a JSON crate).
mod serde_json_lite {
    pub struct Value {
        pub seq: u64,
    }
    pub fn parse(bytes: &[u8]) -> Value {
        let text = std::str::from_utf8(bytes).unwrap();
        let digits: String = text.chars().filter(char::is_ascii_digit).collect();
        Value {
            seq: digits.parse().unwrap(),
        }
    }
}

/// t02: a consumer waiting in a long poll gets a record produced after it started waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t02_long_poll_delivers_a_later_record() {
    let broker = TestBroker::start().await;
    let client = broker.client_with_topic("later", 1).await;
    let mut fetch = v1::fetch_client::FetchClient::connect(format!("http://{}", broker.address()))
        .await
        .unwrap();
    let request = v1::FetchRequest {
        topic: "later".into(),
        partitions: vec![v1::PartitionPosition {
            partition: 0,
            offset: 0,
        }],
        max_bytes: 1 << 20,
        max_wait_ms: 20_000,
        follow: false,
    };
    let mut stream = fetch.fetch(request).await.unwrap().into_inner();
    // The broker holds the fetch open: nothing arrives while there is no data.
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(quiet.is_err(), "the fetch must wait for data");
    let waiting = tokio::spawn(async move {
        let first = stream.message().await.unwrap().unwrap();
        (first, stream.message().await.unwrap())
    });
    let producer = client.producer().build();
    producer
        .send_and_wait(ProducerRecord::new("later", "hello"))
        .await
        .unwrap();
    let (first, end) = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert_eq!(first.batches.len(), 1);
    assert_eq!((first.next_offset, first.high_watermark), (1, 1));
    assert!(
        end.is_none(),
        "without follow the stream ends after the data"
    );

    // The client's consumer, started at the end, sees only what comes next.
    let mut consumer = reader(&client, "later", [0], StartAt::Latest).await;
    eventually(WAIT, "the consumer's start position", async || {
        consumer.position("later", 0)
    })
    .await;
    let next = tokio::spawn(async move { consumer.next().await.unwrap().unwrap() });
    producer
        .send_and_wait(ProducerRecord::new("later", "world"))
        .await
        .unwrap();
    let record = tokio::time::timeout(WAIT, next).await.unwrap().unwrap();
    assert_eq!(
        (record.offset, record.value.as_deref()),
        (1, Some(&b"world"[..]))
    );
}

/// t03: acks=leader answers before durability; the record is still readable, and headers,
/// keys and timestamps survive the round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t03_record_fields_and_acks_leader() {
    let broker = TestBroker::start().await;
    let client = broker.client_with_topic("fields", 2).await;
    let producer = client.producer().acks(Acks::Leader).build();
    let record = ProducerRecord::new("fields", "v")
        .key("k")
        .partition(1)
        .timestamp(1_700_000_000_123)
        .header("trace", "abc");
    let meta = producer.send_and_wait(record).await.unwrap();
    assert_eq!(
        (meta.partition, meta.offset, meta.timestamp),
        (1, 0, 1_700_000_000_123)
    );
    let mut consumer = reader(&client, "fields", [1], StartAt::Earliest).await;
    let got = next_record(&mut consumer).await;
    assert_eq!(got.key, Some(Bytes::from_static(b"k")));
    assert_eq!(got.value, Some(Bytes::from_static(b"v")));
    assert_eq!(got.timestamp, 1_700_000_000_123);
    assert_eq!(
        got.headers,
        vec![("trace".to_string(), Bytes::from_static(b"abc"))]
    );
    // Starting by time finds the same record; a later time finds nothing yet.
    let mut by_time = reader(
        &client,
        "fields",
        [1],
        StartAt::Timestamp(1_700_000_000_000),
    )
    .await;
    assert_eq!(next_record(&mut by_time).await.offset, 0);
    let _ = eventually(WAIT, "a high watermark of 1", async || {
        let d = client.admin().describe_topic("fields").await.ok()?;
        (d.partitions[1].high_watermark == 1).then_some(())
    })
    .await;
}

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

async fn produce_to_each(
    producer: &strata_client::Producer,
    topic: &str,
    partitions: u32,
    per_partition: u32,
    tag: &str,
) {
    let mut pending = Vec::new();
    for p in 0..partitions {
        for i in 0..per_partition {
            pending.push(
                producer
                    .send(ProducerRecord::new(topic, format!("{tag}-{p}-{i}")).partition(p))
                    .await
                    .unwrap(),
            );
        }
    }
    for d in pending {
        d.await.unwrap();
    }
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
    for m in [&a, &b, &c] {
        m.commit().await;
    }
    let committed = client.admin().committed_offsets("billing").await.unwrap();
    let description = client.admin().describe_group("billing").await.unwrap();
    assert!(
        committed.len() == 6 && committed.iter().all(|(_, _, o)| *o == 100),
        "committed {committed:?}; group {description:?}"
    );
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

fn detail(status: &tonic::Status) -> v1::ErrorDetail {
    prost::Message::decode(status.details()).expect("statuses carry an ErrorDetail")
}

fn batch_bytes(values: &[&[u8]]) -> Vec<u8> {
    let mut b = strata_storage::BatchBuilder::new();
    for v in values {
        b.push(strata_storage::NewRecord::value(1, v)).unwrap();
    }
    b.finish().unwrap().as_bytes().to_vec()
}

/// t20: bad requests get the documented status and error code, store nothing, and the
/// broker keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_bad_input_gets_clear_errors_and_the_broker_keeps_serving() {
    let broker = TestBroker::start().await;
    let client = broker.client_with_topic("good", 2).await;
    let url = format!("http://{}", broker.address());
    let mut produce = v1::produce_client::ProduceClient::connect(url.clone())
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);
    let request = |topic: &str, partition: u32, batch: Vec<u8>| v1::ProduceRequest {
        topic: topic.to_string(),
        batches: vec![v1::PartitionBatch {
            partition,
            batch: batch.into(),
        }],
        acks: v1::Acks::All as i32,
        timeout_ms: 0,
    };

    // Unknown topic: NOT_FOUND / UNKNOWN_TOPIC.
    let status = produce
        .produce(request("nope", 0, batch_bytes(&[b"x"])))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), detail(&status).code()),
        (tonic::Code::NotFound, v1::ErrorCode::UnknownTopic)
    );

    // A batch with a wrong CRC: INVALID_BATCH for that batch.
    let mut corrupt = batch_bytes(&[b"hello", b"world"]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let response = produce
        .produce(request("good", 0, corrupt))
        .await
        .unwrap()
        .into_inner();
    let error = response.results[0]
        .error
        .clone()
        .expect("the batch is refused");
    assert_eq!(error.code(), v1::ErrorCode::InvalidBatch);
    assert!(error.message.contains("CRC"), "{}", error.message);

    // Garbage that is not a batch at all, and a truncated batch.
    let response = produce
        .produce(request("good", 0, b"not a batch".to_vec()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.results[0].error.clone().unwrap().code(),
        v1::ErrorCode::InvalidBatch
    );
    let mut truncated = batch_bytes(&[b"abc"]);
    truncated.truncate(truncated.len() - 2);
    let response = produce
        .produce(request("good", 0, truncated))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.results[0].error.clone().unwrap().code(),
        v1::ErrorCode::InvalidBatch
    );

    // A batch over max_batch_bytes (1 MiB here): BATCH_TOO_LARGE.
    let big = vec![7u8; 1_100_000];
    let response = produce
        .produce(request("good", 0, batch_bytes(&[&big])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.results[0].error.clone().unwrap().code(),
        v1::ErrorCode::BatchTooLarge
    );

    // An unknown partition.
    let response = produce
        .produce(request("good", 9, batch_bytes(&[b"x"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.results[0].error.clone().unwrap().code(),
        v1::ErrorCode::UnknownPartition
    );

    // Invalid topic names: INVALID_ARGUMENT.
    for name in ["", "has space", ".hidden", "slash/es"] {
        let err = client
            .admin()
            .create_topic(name, TopicSpec::partitions(1))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(ErrorCode::InvalidArgument),
            "{name:?}: {err}"
        );
    }
    let err = client
        .admin()
        .create_topic("zero", TopicSpec::partitions(0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));
    let err = client
        .admin()
        .create_topic("good", TopicSpec::partitions(1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TopicExists));
    let err = client
        .admin()
        .create_topic(
            "replicated",
            TopicSpec {
                partitions: 1,
                replication_factor: 3,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::InvalidArgument),
        "one node cannot hold three replicas"
    );

    // An offset past the end: OUT_OF_RANGE / OFFSET_OUT_OF_RANGE.
    let mut fetch = v1::fetch_client::FetchClient::connect(url).await.unwrap();
    let status = fetch
        .fetch(v1::FetchRequest {
            topic: "good".into(),
            partitions: vec![v1::PartitionPosition {
                partition: 0,
                offset: 1_000,
            }],
            max_bytes: 0,
            max_wait_ms: 0,
            follow: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), detail(&status).code()),
        (tonic::Code::OutOfRange, v1::ErrorCode::OffsetOutOfRange)
    );

    // Nothing bad was stored, and the broker still serves good requests.
    let producer = client.producer().build();
    let meta = producer
        .send_and_wait(ProducerRecord::new("good", "fine").partition(0))
        .await
        .unwrap();
    assert_eq!(meta.offset, 0, "refused batches took no offsets");
    let mut consumer = reader(&client, "good", [0], StartAt::Earliest).await;
    let r = next_record(&mut consumer).await;
    assert_eq!(r.value.as_deref(), Some(&b"fine"[..]));
    // The client reports an unknown topic as such.
    let err = producer
        .send(ProducerRecord::new("missing", "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopic));
}

async fn http_get(address: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: strata\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// t04: operators get health and Prometheus metrics (traffic, latency, partitions, log size,
/// group lag, aggregation counters) over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t04_health_and_metrics_over_http() {
    let broker = TestBroker::start_with(|c| c.http = Some("127.0.0.1:0".parse().unwrap())).await;
    let http = broker.http_address().unwrap();
    let client = broker.client_with_topic("watched", 2).await;
    let aggs = client.aggregations();
    aggs.create(strata_client::AggregationSpec {
        name: "per-second".into(),
        topic: "watched".into(),
        window: "tumbling:1s".into(),
        measures: vec!["count".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "the aggregation to run",
        async || {
            let d = aggs.describe("per-second").await.ok()?;
            d.partitions.iter().all(|p| p.running).then_some(())
        },
    )
    .await;
    let producer = client.producer().build();
    produce_to_each(&producer, "watched", 2, 5, "m").await;
    let mut consumer = client
        .consumer()
        .assign("watched", [0])
        .group("ops")
        .start_at(StartAt::Earliest)
        .build()
        .await
        .unwrap();
    for _ in 0..5 {
        next_record(&mut consumer).await;
    }
    consumer.commit().await.unwrap();

    // Aggregations fold just after the acknowledgement.
    eventually(Duration::from_secs(10), "every event counted", async || {
        let d = aggs.describe("per-second").await.ok()?;
        (d.partitions.iter().map(|p| p.events).sum::<u64>() == 10).then_some(())
    })
    .await;
    let (status, body) = http_get(http, "/health").await;
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("\"serving\""), "{body}");
    let (status, metrics) = http_get(http, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    for expected in [
        "strata_produce_records_total{topic=\"watched\"} 10",
        "strata_fetch_records_total{topic=\"watched\"}",
        "strata_request_duration_seconds_bucket{le=",
        "strata_partitions 2",
        "strata_log_bytes{topic=\"watched\",partition=\"0\"}",
        "strata_group_lag{group=\"ops\",topic=\"watched\",partition=\"0\"} 0",
        "strata_high_watermark{topic=\"watched\",partition=\"1\"} 6",
        "strata_aggregation_events{aggregation=\"per-second\",topic=\"watched\",partition=\"1\"} 5",
        "strata_aggregation_late_events{aggregation=\"per-second\",topic=\"watched\",partition=\"0\"} 0",
        "strata_aggregation_windows{aggregation=\"per-second\",topic=\"watched\",partition=\"0\"}",
    ] {
        assert!(
            metrics.contains(expected),
            "missing `{expected}` in:\n{metrics}"
        );
    }
    assert!(metrics.trim_end().ends_with("# EOF"));
}
