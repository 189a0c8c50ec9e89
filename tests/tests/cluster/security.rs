//! t60–t69: security: the peer listener and its mutual TLS.

use std::time::Duration;

use strata_client::ProducerRecord;
use strata_proto::v1;
use strata_tests::cluster::TestCluster;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::support::{NODE, rf3, wait_replicated};

/// A channel to `address` over TLS that trusts `ca` for `node-<target>.strata` and presents
/// `identity` (cert, key PEM), if any.
async fn peer_channel(
    address: std::net::SocketAddr,
    target: u64,
    ca: &str,
    identity: Option<(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(strata_broker::tls::node_name(target));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{address}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

fn vote_from(candidate: u64, term: u64) -> v1::RaftMessage {
    let vote = serde_json::json!({
        "vote": {"leader_id": {"term": term, "node_id": candidate}, "committed": false},
        "last_log_id": null,
    });
    v1::RaftMessage {
        group_id: 0,
        body: serde_json::to_vec(&vote).unwrap().into(),
    }
}

/// A Raft call's outcome: the status code of its refusal, or `Ok` when a group answered.
async fn vote_code(channel: Channel, message: v1::RaftMessage) -> tonic::Code {
    let mut raft = v1::raft_client::RaftClient::new(channel);
    match raft.pre_vote(message).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

/// t60: peer traffic goes only to the peer listener, only over mutual TLS with the cluster's
/// CA, and only in the name of the node whose certificate the connection presents. The
/// client port has no Raft service and takes no node-to-node share of a search or query;
/// the peer port refuses a connection without a client certificate and one with a
/// certificate from another CA, answers a certificate naming a node outside the membership
/// `UNAUTHENTICATED`, and a message whose sender is not the certificate's node
/// `PERMISSION_DENIED`. A term-overflow vote from a real member is refused too. The cluster
/// keeps replicating through all of it, and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t60_peer_traffic_needs_the_peer_listener_and_a_member_certificate() {
    let mut cluster = TestCluster::start(NODE, 3, |_| {}).await;
    let client = cluster.client().await;
    client
        .admin()
        .create_topic("guarded", rf3(1))
        .await
        .unwrap();
    let producer = client.producer().build();
    producer
        .send_and_wait(ProducerRecord::new("guarded", "before").partition(0))
        .await
        .unwrap();

    // The client port: no Raft, no node-to-node shares.
    let node = cluster.node(1);
    let client_port = Endpoint::from_shared(format!("http://{}", node.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(
        vote_code(client_port.clone(), vote_from(2, 1)).await,
        tonic::Code::Unimplemented
    );
    let share = v1::search_client::SearchClient::new(client_port.clone())
        .search(v1::SearchRequest {
            partitions: vec![v1::SearchPartition {
                topic: "guarded".into(),
                partition: 0,
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(share.code(), tonic::Code::PermissionDenied, "{share:?}");
    let partial = v1::aggregations_client::AggregationsClient::new(client_port)
        .query(v1::QueryAggregationRequest {
            name: "any".into(),
            partial: true,
            partitions: vec![0],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(partial.code(), tonic::Code::PermissionDenied, "{partial:?}");

    // The peer port: plain text, no client certificate, another CA: no connection.
    let ca = cluster.ca.certificate_pem().to_string();
    let plain = Endpoint::from_shared(format!("http://{}", node.peer_address))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(channel) = plain {
        assert_ne!(vote_code(channel, vote_from(2, 1)).await, tonic::Code::Ok);
    }
    let anonymous = peer_channel(node.peer_address, 1, &ca, None).await;
    if let Ok(channel) = anonymous {
        assert_ne!(vote_code(channel, vote_from(2, 1)).await, tonic::Code::Ok);
    }
    let stranger_ca = strata_broker::tls::ClusterCa::generate().unwrap();
    let foreign = peer_channel(
        node.peer_address,
        1,
        &ca,
        Some(stranger_ca.node_certificate(2).unwrap()),
    )
    .await;
    if let Ok(channel) = foreign {
        assert_ne!(vote_code(channel, vote_from(2, 1)).await, tonic::Code::Ok);
    }

    // The cluster's CA, but a node that is not a member.
    let outsider = peer_channel(
        node.peer_address,
        1,
        &ca,
        Some(cluster.ca.node_certificate(9).unwrap()),
    )
    .await
    .expect("the handshake succeeds: the certificate is from the cluster's CA");
    assert_eq!(
        vote_code(outsider, vote_from(9, 1)).await,
        tonic::Code::Unauthenticated
    );

    // Node 2's own certificate: it may speak for node 2 only, and not with an absurd term.
    let files = cluster.node(2).peer_tls.clone().unwrap();
    let member = (
        std::fs::read_to_string(&files.cert).unwrap(),
        std::fs::read_to_string(&files.key).unwrap(),
    );
    let as_two = peer_channel(node.peer_address, 1, &ca, Some(member))
        .await
        .unwrap();
    assert_eq!(
        vote_code(as_two.clone(), vote_from(3, 1)).await,
        tonic::Code::PermissionDenied
    );
    let append = v1::RaftAppendRequest {
        group_id: 0,
        vote_term: 1,
        vote_node: 3,
        vote_committed: true,
        prev_log_id: None,
        leader_commit: None,
        entries: Vec::new(),
    };
    let forged = v1::raft_client::RaftClient::new(as_two.clone())
        .append(append)
        .await
        .unwrap_err();
    assert_eq!(forged.code(), tonic::Code::PermissionDenied, "{forged:?}");
    assert_eq!(
        vote_code(as_two.clone(), vote_from(2, u64::MAX)).await,
        tonic::Code::InvalidArgument
    );
    // In its own name, with a stale term, it gets an answer (a refused vote).
    assert_eq!(vote_code(as_two, vote_from(2, 0)).await, tonic::Code::Ok);

    // The cluster keeps replicating, also after node 1 restarts.
    producer
        .send_and_wait(ProducerRecord::new("guarded", "during").partition(0))
        .await
        .unwrap();
    cluster.restart(1).await;
    producer
        .send_and_wait(ProducerRecord::new("guarded", "after").partition(0))
        .await
        .unwrap();
    wait_replicated(&cluster, "guarded", 1, 3).await;
}

/// t61: on three nodes that require a login, each node's audit events reach the one audit
/// partition, wherever its leader is (a node that does not lead it sends them to the
/// leader's peer listener over mutual TLS): a failed login on every node shows up once per
/// node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t61_every_node_audits_into_the_one_audit_topic() {
    use strata_client::{Client, ClientConfig, Credentials, StartAt};
    use tokio_stream::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("admin-password");
    std::fs::write(&password_file, "root secret").unwrap();
    let cluster = TestCluster::start(NODE, 3, |c| {
        c.auth = Some(strata_broker::config::AuthMode::Required);
        c.superusers = vec!["admin".into()];
        c.bootstrap_password_file = Some(password_file.clone());
    })
    .await;
    let as_user = |password: &str| ClientConfig {
        credentials: Some(Credentials {
            user: "admin".into(),
            password: password.into(),
        }),
        ..ClientConfig::default()
    };
    let admin = strata_tests::eventually(Duration::from_secs(30), "a login", async || {
        Client::connect_with(&cluster.bootstrap(), as_user("root secret"))
            .await
            .ok()
    })
    .await;
    for node in &cluster.nodes {
        let refused = Client::connect_with(&node.address.to_string(), as_user("guess")).await;
        assert!(refused.is_err(), "node {}", node.id);
    }
    strata_tests::eventually(Duration::from_secs(30), "each node's event", async || {
        admin.admin().describe_topic("_audit").await.ok()?;
        let mut consumer = strata_tests::reader(&admin, "_audit", [0], StartAt::Earliest).await;
        let mut nodes = std::collections::BTreeSet::new();
        while let Ok(Some(Ok(r))) =
            tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
        {
            let e: serde_json::Value = serde_json::from_slice(r.value.as_deref()?).ok()?;
            if e["action"] == "Access/Login" && e["result"] == "unauthenticated" {
                nodes.insert(e["node"].as_u64()?);
            }
        }
        (nodes.len() == 3).then_some(())
    })
    .await;
}
