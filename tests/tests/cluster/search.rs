//! t50–t59: search equal to brute force, hostile queries, indexes across kills and rebuilds.

use std::collections::BTreeMap;
use std::time::Duration;

use strata_client::{ProducerRecord, StartAt, TopicSpec};
use strata_tests::cluster::TestCluster;
use strata_tests::{eventually, hit_numbers, next_record, reader};

use super::support::{NODE, rf3};

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

/// Searches one node's replicas of `partitions` as they are (the internal form of the
/// request a node sends to another, on its peer listener).
async fn replica_search(
    cluster: &TestCluster,
    node: u64,
    topic: &str,
    partitions: &[u32],
) -> Option<strata_proto::v1::SearchResponse> {
    use strata_proto::v1;
    let mut rpc = v1::search_client::SearchClient::new(cluster.peer_channel(node).await?);
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
    eventually(Duration::from_secs(30), "indexing under way", async || {
        let r = replica_search(&cluster, victim, "indexed", &[0, 1]).await?;
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
    let topic_id = cluster.topic_id("indexed").await;
    cluster.stop(other);
    for p in 0..2 {
        for (node, dir) in cluster.replica_dirs(topic_id, p) {
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
        let r = eventually(
            Duration::from_secs(60),
            "replica indexes caught up",
            async || {
                let r = replica_search(&cluster, node.id, "indexed", &[0, 1]).await?;
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
