//! t30–t39: replication: identical logs, leader kills, isolation, retried batches, snapshots, random faults.

use std::collections::BTreeMap;
use std::time::Duration;

use strata_client::{ProducerRecord, StartAt, TopicSpec};
use strata_tests::cluster::{TestCluster, read_log};
use strata_tests::{eventually, next_record, reader};

use super::support::{
    NODE, assert_logs_agree, assert_same_logs, batch, check_acknowledged, dump_logs,
    first_duplicate, init_producer, produce_to_leader, raw_produce, read_strings, read_values, rf3,
    spawn_numbered_producer, wait_replicated,
};

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
    assert_same_logs(&mut cluster, "same", 3).await;
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
    assert_same_logs(&mut cluster, "kill", 1).await;
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
    assert_same_logs(&mut cluster, "cut", 1).await;
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
    let topic_id = cluster.topic_id("old").await;
    for id in 1..=3 {
        cluster.stop(id);
    }
    // Replicas agree on every entry they both hold.
    let logs: Vec<_> = cluster
        .replica_dirs(topic_id, 0)
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
        dump_logs(&mut cluster, "chaos").await;
    }
    check_acknowledged(&values, &acked);
    assert_same_logs(&mut cluster, "chaos", 1).await;
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

/// t38: the disk under a partition leader's logs fails (every flush fails, as a failing
/// `fsync` does): its replica stops leading, another is elected and acknowledges on, and
/// once the disk works again the node reopens the replica without a restart and it
/// catches up. Nothing acknowledged is lost and every replica holds the same log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t38_a_leader_whose_disk_fails_steps_down_and_recovers_without_a_restart() {
    let mut cluster = TestCluster::start(NODE, 3, |_| {}).await;
    let client = cluster.client().await;
    client
        .admin()
        .create_topic("fragile", rf3(1))
        .await
        .unwrap();
    let producer = client.producer().build();
    let send = async |i: u32| {
        let record = ProducerRecord::new("fragile", format!("v{i}")).partition(0);
        producer.send_and_wait(record).await.unwrap().offset
    };
    for i in 0..100 {
        assert_eq!(send(i).await, u64::from(i));
    }
    let victim = cluster.leader_of("fragile", 0).await;
    cluster.node(victim).fail_disk();
    for i in 100..200 {
        assert_eq!(send(i).await, u64::from(i));
    }
    assert_ne!(cluster.leader_of("fragile", 0).await, victim);
    let wait = Duration::from_secs(30);
    eventually(
        wait,
        "the victim to report its failed replica",
        async || {
            let log = cluster.node(victim).log_tail(400);
            log.contains("replica failed; taking it out").then_some(())
        },
    )
    .await;
    cluster.node(victim).heal_disk();
    eventually(wait, "the victim to reopen its replica", async || {
        let log = cluster.node(victim).log_tail(400);
        log.contains("failed replica reopened").then_some(())
    })
    .await;
    for i in 200..250 {
        assert_eq!(send(i).await, u64::from(i));
    }
    let expected: Vec<String> = (0..250).map(|i| format!("v{i}")).collect();
    assert_eq!(read_strings(&client, "fragile", 250).await, expected);
    wait_replicated(&cluster, "fragile", 1, 250).await;
    assert!(cluster.node(victim).is_running(), "no restart");
    assert_same_logs(&mut cluster, "fragile", 1).await;
}
