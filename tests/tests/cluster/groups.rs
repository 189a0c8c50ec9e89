//! t36: consumer groups across the loss of the coordinator.

use std::time::Duration;

use strata_client::{ProducerRecord, StartAt};
use strata_tests::cluster::TestCluster;
use strata_tests::{eventually, next_record};

use super::support::{NODE, rf3};

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
