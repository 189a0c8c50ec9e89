//! t01–t09: producing and consuming, long polls, record fields, health and metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use strata_client::{Acks, ProducerRecord, StartAt, TopicSpec};
use strata_proto::v1;
use strata_tests::{TestBroker, eventually, next_record, reader};

use super::{WAIT, http_get, produce_to_each};

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
        "strata_aggregation_events_total{aggregation=\"per-second\",topic=\"watched\",partition=\"1\"} 5",
        "strata_aggregation_late_events_total{aggregation=\"per-second\",topic=\"watched\",partition=\"0\"} 0",
        "strata_aggregation_windows{aggregation=\"per-second\",topic=\"watched\",partition=\"0\"}",
    ] {
        assert!(
            metrics.contains(expected),
            "missing `{expected}` in:\n{metrics}"
        );
    }
    assert!(metrics.trim_end().ends_with("# EOF"));
}

/// t05: once `create_aggregation` returns, every record produced afterwards is folded: a
/// burst of 5,000 sent right after it is counted in full (it used to return before the
/// partitions' leaders started the aggregation, and 0 to 127 of such a burst were counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t05_a_burst_right_after_an_aggregation_is_created_is_all_counted() {
    let broker = TestBroker::start().await;
    let client = broker.client_with_topic("burst", 4).await;
    let aggs = client.aggregations();
    aggs.create(strata_client::AggregationSpec {
        name: "burst-count".into(),
        topic: "burst".into(),
        window: "tumbling:1m".into(),
        measures: vec!["count".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let d = aggs.describe("burst-count").await.unwrap();
    assert_eq!(d.partitions.len(), 4);
    assert!(d.partitions.iter().all(|p| p.running), "{:?}", d.partitions);
    let producer = client.producer().build();
    produce_to_each(&producer, "burst", 4, 1_250, "b").await;
    let counted = eventually(WAIT, "the burst to be folded", async || {
        let d = aggs.describe("burst-count").await.ok()?;
        let events: u64 = d.partitions.iter().map(|p| p.events).sum();
        (events >= 5_000).then_some(events)
    })
    .await;
    assert_eq!(counted, 5_000);
    let r = aggs.query("burst-count", None, None, &[]).await.unwrap();
    let total: f64 = r.rows.iter().filter_map(|row| row.values[0].value).sum();
    assert_eq!(total, 5_000.0);
}

/// `/health` once it answers 503 with a body holding `holding`; it says `degraded`.
async fn wait_degraded(http: std::net::SocketAddr, holding: &str) -> serde_json::Value {
    let health = eventually(WAIT, &format!("/health to hold {holding}"), async || {
        let (status, body) = http_get(http, "/health").await;
        (status.contains("503") && body.contains(holding)).then_some(body)
    })
    .await;
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    health
}

/// Waits until `/health` answers 200 again.
async fn wait_whole(http: std::net::SocketAddr) {
    eventually(WAIT, "/health to be whole again", async || {
        let (status, _) = http_get(http, "/health").await;
        status.contains("200").then_some(())
    })
    .await;
}

/// t06: a replica whose log fails a flush (an injected `EIO` under its directory) is
/// reported — `/health` 503 `degraded` naming it, `strata_replicas_failed` — taken out and
/// reopened from disk once the disk works again, without a restart; every acknowledged
/// record is still there, a record sent meanwhile is stored at most once, and the
/// partition takes writes again. A consumer following the partition throughout gets every
/// record: its stream from the replica taken out ends, and it follows the reopened one
/// (found by the fault suite: it waited on the old replica for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t06_a_log_that_failed_a_flush_is_reported_and_reopened_without_a_restart() {
    let broker = TestBroker::start_with(|c| c.http = Some("127.0.0.1:0".parse().unwrap())).await;
    let http = broker.http_address().unwrap();
    let client = broker.client_with_topic("fragile", 2).await;
    let producer = client.producer().build();
    produce_to_each(&producer, "fragile", 2, 50, "before").await;
    let mut follower = reader(&client, "fragile", [0], StartAt::Earliest).await;
    for i in 0..50 {
        let r = next_record(&mut follower).await;
        assert_eq!(r.value.as_deref(), Some(format!("before-0-{i}").as_bytes()));
    }

    let disk = broker.data_dir().join("topics");
    strata_storage::fault::fail_disk(&disk);
    let during = {
        let producer = client
            .producer()
            .delivery_timeout(Duration::from_secs(60))
            .build();
        tokio::spawn(async move {
            producer
                .send_and_wait(ProducerRecord::new("fragile", "during").partition(0))
                .await
        })
    };
    let health = wait_degraded(http, "\"failed_replicas\":[{").await;
    let failed = &health["failed_replicas"][0];
    assert_eq!(failed["topic"], "fragile", "{health}");
    assert_eq!(failed["partition"], 0, "{health}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("injected disk failure"),
        "{health}"
    );
    let (_, metrics) = http_get(http, "/metrics").await;
    assert!(metrics.contains("strata_replicas_failed 1"), "{metrics}");
    // While the disk fails, reopening fails too, and the replica stays out.
    eventually(WAIT, "a failed reopening", async || {
        let (_, body) = http_get(http, "/health").await;
        body.contains("reopening failed").then_some(())
    })
    .await;

    strata_storage::fault::heal_disk(&disk);
    wait_whole(http).await;
    let (_, metrics) = http_get(http, "/metrics").await;
    assert!(metrics.contains("strata_replicas_failed 0"), "{metrics}");
    assert!(
        metrics.contains("strata_replica_recoveries_total 1"),
        "{metrics}"
    );
    // The record sent meanwhile was retried by its producer; stored once, after the rest.
    let during = tokio::time::timeout(WAIT, during).await.unwrap().unwrap();
    assert!(during.is_ok(), "{during:?}");
    produce_to_each(&producer, "fragile", 2, 10, "after").await;
    for p in 0..2u32 {
        let mut expected: Vec<String> = (0..50).map(|i| format!("before-{p}-{i}")).collect();
        if p == 0 {
            expected.push("during".into());
        }
        expected.extend((0..10).map(|i| format!("after-{p}-{i}")));
        let mut consumer = reader(&client, "fragile", [p], StartAt::Earliest).await;
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let r = next_record(&mut consumer).await;
            got.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
        }
        assert_eq!(got, expected, "partition {p}");
        if p == 0 {
            for value in &expected[50..] {
                let r = next_record(&mut follower).await;
                assert_eq!(r.value.as_deref(), Some(value.as_bytes()));
            }
        }
        let d = client.admin().describe_topic("fragile").await.unwrap();
        assert_eq!(
            d.partitions[p as usize].high_watermark,
            expected.len() as u64
        );
    }
}

/// t07: the controller's log fails a flush (an injected `EIO` under its directory): the
/// node reports it (`/health` 503 `degraded` with `controller_failure`), reopens the
/// controller replica from disk once the disk works, without a restart
/// (`strata_controller_recoveries_total`), and takes admin commands again; the topics it
/// had are all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t07_a_controller_log_that_failed_a_flush_is_reopened_without_a_restart() {
    let broker = TestBroker::start_with(|c| c.http = Some("127.0.0.1:0".parse().unwrap())).await;
    let http = broker.http_address().unwrap();
    let client = broker.client_with_topic("kept", 2).await;
    let disk = broker.data_dir().join("controller");
    strata_storage::fault::fail_disk(&disk);
    // A command makes the controller write, and its flush fails.
    let admin = client.admin();
    let refused = admin.create_topic("during", TopicSpec::partitions(1)).await;
    assert!(refused.is_err(), "{refused:?}");
    let health = wait_degraded(http, "reopening failed").await;
    assert!(
        (health["controller_failure"].as_str().unwrap()).contains("injected disk failure"),
        "{health}"
    );

    strata_storage::fault::heal_disk(&disk);
    wait_whole(http).await;
    let (_, metrics) = http_get(http, "/metrics").await;
    assert!(
        metrics.contains("strata_controller_recoveries_total 1"),
        "{metrics}"
    );
    eventually(WAIT, "a topic created after the recovery", async || {
        admin
            .create_topic("after", TopicSpec::partitions(1))
            .await
            .ok()
    })
    .await;
    let mut names = strata_tests::topic_names(&client).await;
    names.sort();
    // The command refused while the disk failed may have reached the log before its
    // flush failed, and then applies once the replica is back: either way, nothing else.
    names.retain(|n| n != "during");
    assert_eq!(names, ["after", "kept"]);
    let producer = client.producer().build();
    produce_to_each(&producer, "after", 1, 5, "x").await;
}
