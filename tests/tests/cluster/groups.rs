//! t36, t39, t72: consumer groups across the loss of the coordinator, a deposed coordinator
//! that does not know it, and a replica behind its leader that must not send a consumer
//! back to the start.

use std::time::Duration;

use strata_client::{ProducerRecord, StartAt};
use strata_tests::cluster::TestCluster;
use strata_tests::{error_detail, eventually, next_record};

use super::support::{NODE, rf3};

/// The node leading the controller (the group coordinator), as node 1 reports it.
async fn controller_leader(cluster: &TestCluster, client: &strata_client::Client) -> u64 {
    let status = client
        .admin()
        .node_status(&cluster.node(1).address.to_string(), Duration::from_secs(5))
        .await
        .unwrap();
    status.controller_leader.expect("a controller leader")
}

/// A client bootstrapped from every node but `lost`.
async fn client_without(cluster: &TestCluster, lost: u64) -> strata_client::Client {
    let others = (1..=3)
        .filter(|id| *id != lost)
        .map(|id| cluster.node(id).address.to_string())
        .collect::<Vec<_>>()
        .join(",");
    strata_client::Client::connect(&others).await.unwrap()
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
    let coordinator = controller_leader(&cluster, &client).await;
    cluster.kill(coordinator);
    let client = client_without(&cluster, coordinator).await;
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

/// t39 (found by the fault suite, seed 101): a controller leader cut off from the others
/// goes on believing it leads until it hears of a newer term. Offsets committed through
/// the new leader meanwhile must not look undone when the old one is asked: it answers no
/// read of committed offsets it cannot confirm with a quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t39_a_deposed_coordinator_answers_no_stale_offsets() {
    use strata_proto::v1;
    let cluster = TestCluster::start(NODE, 3, |_| {}).await;
    let client = cluster.client().await;
    client.admin().create_topic("grp", rf3(1)).await.unwrap();
    let producer = client.producer().build();
    for i in 0..10 {
        producer
            .send_and_wait(ProducerRecord::new("grp", i.to_string()))
            .await
            .unwrap();
    }
    let consume_and_commit = async |client: &strata_client::Client, n: usize| {
        let mut consumer = client
            .consumer()
            .group("g")
            .topic("grp")
            .auto_commit(None)
            .start_at(StartAt::Earliest)
            .build()
            .await
            .unwrap();
        for _ in 0..n {
            next_record(&mut consumer).await;
        }
        consumer.commit().await.unwrap();
        consumer.close().await.unwrap();
    };
    consume_and_commit(&client, 4).await;
    let old = controller_leader(&cluster, &client).await;
    cluster.isolate(old);
    let survivors = client_without(&cluster, old).await;
    // The others elect a leader and take the next commit.
    let step = Duration::from_secs(5);
    let committed = eventually(
        Duration::from_secs(30),
        "a commit through the new coordinator",
        async || {
            use futures_util::StreamExt;
            let build = survivors
                .consumer()
                .group("g")
                .topic("grp")
                .auto_commit(None)
                .start_at(StartAt::Earliest)
                .build();
            let mut consumer = tokio::time::timeout(step, build).await.ok()?.ok()?;
            let mut last = 0;
            while last < 9 {
                let r = tokio::time::timeout(step, consumer.next())
                    .await
                    .ok()??
                    .ok()?;
                last = r.offset;
            }
            tokio::time::timeout(step, consumer.commit())
                .await
                .ok()?
                .ok()?;
            let _ = tokio::time::timeout(step, consumer.close()).await;
            let admin = survivors.admin();
            tokio::time::timeout(step, admin.committed_offsets("g"))
                .await
                .ok()?
                .ok()
        },
    )
    .await;
    assert_eq!(committed, [("grp".to_string(), 0, 10)]);
    // The old leader, asked directly on its client port (which still works), refuses.
    let mut rpc =
        v1::groups_client::GroupsClient::connect(format!("http://{}", cluster.node(old).address))
            .await
            .unwrap();
    let read = rpc
        .fetch_offsets(v1::FetchOffsetsRequest {
            group: "g".into(),
            partitions: vec![],
        })
        .await;
    match read {
        Err(status) => assert!(
            matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::FailedPrecondition
            ) || status.message().contains("leader"),
            "{status:?}"
        ),
        Ok(r) => panic!(
            "the cut-off node {old} answered committed offsets {:?}",
            r.into_inner().offsets
        ),
    }
    cluster.heal_all();
}

/// t72 (found by the fault suite, seeds 1004, 2002 and others): a replica behind its leader
/// (here cut off; in the suite, node 3 with a full disk, its unflushed tail cut when it was
/// reopened) answered a consumer whose position it had not reached yet with OFFSET OUT OF
/// RANGE, and the consumer went back to the earliest offset and committed from there:
/// committed offsets moved backwards (1975, then 2). Only the leader serves consumers now;
/// a follower answers NOT_LEADER, which a consumer retries at the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t72_a_replica_behind_its_leader_sends_no_consumer_back_to_the_start() {
    use strata_proto::v1;
    let cluster = TestCluster::start(NODE, 3, |_| {}).await;
    let client = cluster.client().await;
    client.admin().create_topic("lag", rf3(1)).await.unwrap();
    let producer = client.producer().build();
    for i in 0..10 {
        producer
            .send_and_wait(ProducerRecord::new("lag", i.to_string()))
            .await
            .unwrap();
    }
    let leader = cluster.leader_of("lag", 0).await;
    let behind = (1..=3).find(|n| *n != leader).unwrap();
    cluster.isolate(behind);
    let survivors = client_without(&cluster, behind).await;
    let producer = survivors.producer().build();
    let mut last = 0;
    for i in 10..30 {
        last = eventually(
            Duration::from_secs(30),
            "a produce without the cut-off replica",
            async || {
                producer
                    .send_and_wait(ProducerRecord::new("lag", i.to_string()))
                    .await
                    .ok()
            },
        )
        .await
        .offset;
    }
    assert!(last >= 29, "{last}");
    let url = format!("http://{}", cluster.node(behind).address);
    let mut fetch = v1::fetch_client::FetchClient::connect(url).await.unwrap();
    // Past its log, and inside it: both refused as NOT_LEADER, never OUT OF RANGE.
    for offset in [last + 1, 0] {
        let read = fetch
            .fetch(v1::FetchRequest {
                topic: "lag".into(),
                partitions: vec![v1::PartitionPosition {
                    partition: 0,
                    offset,
                }],
                max_wait_ms: 0,
                ..Default::default()
            })
            .await;
        match read {
            Err(status) => assert_eq!(
                error_detail(&status).code(),
                v1::ErrorCode::NotLeader,
                "fetch at {offset} from the replica behind: {status:?}"
            ),
            Ok(_) => panic!("node {behind}, cut off, served a consumer at {offset}"),
        }
    }
    let offsets = fetch
        .list_offsets(v1::ListOffsetsRequest {
            topic: "lag".into(),
            partitions: vec![v1::OffsetQuery {
                partition: 0,
                position: Some(v1::offset_query::Position::Latest(true)),
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .offsets;
    let refused = offsets[0].error.as_ref().map(|d| d.code());
    assert_eq!(refused, Some(v1::ErrorCode::NotLeader), "{offsets:?}");
    // A consumer that knows only the node behind still reads on from its position (the
    // refusal points it to the leader once the link is back).
    cluster.heal_all();
    let only_behind = cluster.client_of(behind).await;
    let mut consumer = strata_tests::reader(&only_behind, "lag", [0], StartAt::Offset(25)).await;
    for expected in 25..30 {
        assert_eq!(next_record(&mut consumer).await.offset, expected);
    }
}

/// t73: a leader cut off from the others (as one paused past an election comes back)
/// still believes it leads, with its log where it stopped. Asked for an offset past that
/// log, it used to answer OFFSET OUT OF RANGE, which sends a consumer back to the earliest
/// offset (found by the fault suite, seed 1022: a committed offset back from 1,477 to 644).
/// It now answers out of range only once a quorum confirms its lead, and here none can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t73_a_deposed_leader_sends_no_consumer_back_to_the_start() {
    use strata_proto::v1;
    let cluster = TestCluster::start(NODE, 3, |_| {}).await;
    let client = cluster.client().await;
    client.admin().create_topic("stale", rf3(1)).await.unwrap();
    let producer = client.producer().build();
    for i in 0..10 {
        producer
            .send_and_wait(ProducerRecord::new("stale", i.to_string()))
            .await
            .unwrap();
    }
    let old = cluster.leader_of("stale", 0).await;
    cluster.isolate(old);
    let survivors = client_without(&cluster, old).await;
    let producer = survivors.producer().build();
    let mut last = 0;
    for i in 10..30 {
        last = eventually(
            Duration::from_secs(30),
            "a produce to the new leader",
            async || {
                producer
                    .send_and_wait(ProducerRecord::new("stale", i.to_string()))
                    .await
                    .ok()
            },
        )
        .await
        .offset;
    }
    let url = format!("http://{}", cluster.node(old).address);
    let mut fetch = v1::fetch_client::FetchClient::connect(url).await.unwrap();
    let read = fetch
        .fetch(v1::FetchRequest {
            topic: "stale".into(),
            partitions: vec![v1::PartitionPosition {
                partition: 0,
                offset: last,
            }],
            max_wait_ms: 0,
            ..Default::default()
        })
        .await;
    match read {
        // UNAVAILABLE: it passed the lead check (it believes it leads) and no quorum
        // confirmed it; NOT_LEADER if it learnt of the new leader first.
        Err(status) => assert!(
            matches!(
                error_detail(&status).code(),
                v1::ErrorCode::Unavailable | v1::ErrorCode::NotLeader
            ),
            "fetch at {last} from the deposed leader: {status:?}"
        ),
        Ok(_) => panic!("node {old}, deposed, served a consumer at {last}"),
    }
}
