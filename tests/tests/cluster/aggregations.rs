//! t40–t49: aggregations under fail-over, equal to brute force; their output topic.

use std::collections::BTreeMap;
use std::time::Duration;

use strata_client::{ProducerRecord, StartAt, TopicSpec};
use strata_tests::cluster::TestCluster;
use strata_tests::{eventually, next_record, reader};

use super::support::{NODE, rf3};

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

/// Every one of the `partitions` of an aggregation's topic runs it as soon as its create
/// returns, as seen from any node.
async fn assert_running(cluster: &TestCluster, name: &str, partitions: usize) {
    for node in 1..=3 {
        let d = (cluster.client_of(node).await.aggregations())
            .describe(name)
            .await
            .unwrap();
        assert_eq!(d.partitions.len(), partitions, "node {node}");
        assert!(
            d.partitions.iter().all(|p| p.running),
            "node {node}: {:?}",
            d.partitions
        );
    }
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
    assert_running(&cluster, "per-device", 2).await;

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
    assert_running(&cluster, "spread-count", 3).await;
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
