//! t30–t39: security of the client listener: TLS, authentication, access control.

use strata_client::{
    AclRule, Client, ClientConfig, ClientTls, ErrorCode, ProducerRecord, StartAt, TopicSpec,
};
use strata_tests::{TestBroker, eventually};
use tokio_stream::StreamExt;

use super::WAIT;

/// A TLS client configuration trusting `ca_pem`.
fn tls(ca_pem: &str) -> ClientConfig {
    ClientConfig {
        tls: Some(ClientTls {
            ca_pem: ca_pem.as_bytes().to_vec(),
            domain: None,
        }),
        ..ClientConfig::default()
    }
}

/// t30: with a certificate and key, the client listener speaks TLS only: a client that
/// trusts the CA produces and consumes (also with credentials the node does not need); a plain-text client and one trusting another CA are
/// refused; a certificate that does not parse stops the node at start with the file named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_the_client_listener_speaks_tls_when_given_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = strata_broker::tls::ClusterCa::generate().unwrap();
    let names = ["localhost".to_string(), "127.0.0.1".to_string()];
    let (cert, key) = ca.write_certificate(dir.path(), "server", &names).unwrap();
    let broker = TestBroker::start_with(|c| {
        c.tls_cert = Some(cert.clone());
        c.tls_key = Some(key.clone());
    })
    .await;

    let client = Client::connect_with(&broker.address(), tls(ca.certificate_pem()))
        .await
        .unwrap();
    client
        .admin()
        .create_topic("private", TopicSpec::partitions(1))
        .await
        .unwrap();
    let meta = client
        .producer()
        .build()
        .send_and_wait(ProducerRecord::new("private", "over tls"))
        .await
        .unwrap();
    assert_eq!(meta.offset, 0);
    let mut consumer = strata_tests::reader(&client, "private", [0], StartAt::Earliest).await;
    let record = strata_tests::next_record(&mut consumer).await;
    assert_eq!(record.value.as_deref(), Some(&b"over tls"[..]));

    // Credentials given to a cluster that requires no login are not needed, not an error.
    let with_credentials = ClientConfig {
        credentials: Some(strata_client::Credentials {
            user: "someone".into(),
            password: "anything".into(),
        }),
        ..tls(ca.certificate_pem())
    };
    let anyone = Client::connect_with(&broker.address(), with_credentials)
        .await
        .unwrap();
    assert_eq!(anyone.access().who_am_i().await.unwrap().user, "anonymous");

    let plain = ClientConfig {
        connect_timeout: std::time::Duration::from_secs(2),
        request_timeout: std::time::Duration::from_secs(2),
        ..ClientConfig::default()
    };
    assert!(
        Client::connect_with(&broker.address(), plain)
            .await
            .is_err()
    );
    let stranger = strata_broker::tls::ClusterCa::generate().unwrap();
    let err = Client::connect_with(&broker.address(), tls(stranger.certificate_pem()))
        .await
        .unwrap_err();
    assert!(!err.to_string().is_empty());

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let refused = strata_broker::Broker::start(strata_broker::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peer_listen: "127.0.0.1:0".parse().unwrap(),
        http: None,
        data_dir: dir.path().join("other"),
        tls_cert: Some(garbage),
        tls_key: Some(key),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("garbage.pem"), "{refused}");
}

/// A client of `broker` logged in as `user`.
async fn login(broker: &TestBroker, user: &str, password: &str) -> strata_client::Result<Client> {
    let config = ClientConfig {
        credentials: Some(strata_client::Credentials {
            user: user.into(),
            password: password.into(),
        }),
        ..ClientConfig::default()
    };
    Client::connect_with(&broker.address(), config).await
}

/// A node that requires a login, and its bootstrap superuser `admin` (password `root
/// secret`, read from a file whose trailing newline is not part of it) logged in.
async fn requiring_logins() -> (TestBroker, Client) {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("admin-password");
    std::fs::write(&password_file, "root secret\n").unwrap();
    let broker = TestBroker::start_with(|c| {
        c.auth = Some(strata_broker::config::AuthMode::Required);
        c.superusers = vec!["admin".into()];
        c.bootstrap_password_file = Some(password_file.clone());
    })
    .await;
    let admin = eventually(WAIT, "the bootstrap superuser", async || {
        login(&broker, "admin", "root secret").await.ok()
    })
    .await;
    (broker, admin)
}

/// Asserts that `result` is a permission denial naming `missing`.
#[track_caller]
fn denied<T: std::fmt::Debug>(result: strata_client::Result<T>, missing: &str) {
    let err = result.expect_err("the call should be denied");
    assert_eq!(err.code(), Some(ErrorCode::PermissionDenied), "{err}");
    assert!(
        err.to_string().contains(missing),
        "`{err}` should name `{missing}`"
    );
}

fn allow(principal: &str, resource: &str, name: &str, operation: &str) -> AclRule {
    strata_client::acl_rule(principal, resource, name, operation)
}

/// t31: with authentication required, an anonymous client, a wrong password and an unknown
/// user are refused; the bootstrap superuser creates users; for each operation a user
/// without the permission is refused with `PERMISSION_DENIED` naming it, and with it
/// succeeds; lists show only what the user may describe and a search covers only topics it
/// may read; a new password or a deleted user ends the old tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t31_users_log_in_and_acls_decide_every_operation() {
    let (broker, admin) = requiring_logins().await;

    // No login, a wrong password, an unknown user.
    let anonymous = Client::connect(&broker.address()).await.unwrap_err();
    assert!(anonymous.to_string().contains("login"), "{anonymous}");
    for (user, password) in [("admin", "wrong"), ("nobody", "root secret")] {
        let err = login(&broker, user, password).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthenticated), "{err}");
    }

    let access = admin.access();
    access.create_user("ada", "ada's password").await.unwrap();
    access.create_user("bob", "bob's password").await.unwrap();
    for topic in ["orders", "secret"] {
        admin
            .admin()
            .create_topic(topic, TopicSpec::partitions(1))
            .await
            .unwrap();
    }
    let ada = login(&broker, "ada", "ada's password").await.unwrap();
    let me = ada.access().who_am_i().await.unwrap();
    assert_eq!((me.user.as_str(), me.superuser), ("ada", false));

    // Write, then read, a topic.
    let producer = ada.producer().retries(0).build();
    denied(
        producer
            .send_and_wait(ProducerRecord::new("orders", r#"{"n":1}"#))
            .await,
        // (The producer's first call is for the topic's metadata.)
        "describe on topic `orders`",
    );
    access
        .add_acl(allow("ada", "topic", "orders", "describe"))
        .await
        .unwrap();
    denied(
        producer
            .send_and_wait(ProducerRecord::new("orders", r#"{"n":1}"#))
            .await,
        "write on topic `orders`",
    );
    access
        .add_acl(allow("ada", "topic", "orders", "write"))
        .await
        .unwrap();
    producer
        .send_and_wait(ProducerRecord::new("orders", r#"{"n":1}"#))
        .await
        .unwrap();
    let consumer = ada
        .consumer()
        .assign("orders", [0])
        .start_at(StartAt::Earliest)
        .build()
        .await;
    let refused = match consumer {
        Ok(mut consumer) => consumer.next().await.expect("an answer").map(|_| ()),
        Err(e) => Err(e),
    };
    denied(refused, "read on topic `orders`");
    access
        .add_acl(allow("ada", "topic", "orders", "read"))
        .await
        .unwrap();
    let mut consumer = strata_tests::reader(&ada, "orders", [0], StartAt::Earliest).await;
    let record = strata_tests::next_record(&mut consumer).await;
    assert_eq!(record.value.as_deref(), Some(&br#"{"n":1}"#[..]));

    // Describe: read implies it; lists hold only what ada may describe.
    ada.admin().describe_topic("orders").await.unwrap();
    denied(
        ada.admin().describe_topic("secret").await,
        "describe on topic `secret`",
    );
    let listed = strata_tests::topic_names(&ada).await;
    assert_eq!(listed, ["orders"]);

    // Create and delete topics (a prefix rule).
    denied(
        ada.admin()
            .create_topic("ada-1", TopicSpec::partitions(1))
            .await,
        "create on topic `ada-1`",
    );
    access
        .add_acl(allow("ada", "topic", "ada-*", "create"))
        .await
        .unwrap();
    ada.admin()
        .create_topic("ada-1", TopicSpec::partitions(1))
        .await
        .unwrap();
    denied(
        ada.admin().delete_topic("ada-1").await,
        "delete on topic `ada-1`",
    );
    access
        .add_acl(allow("ada", "topic", "ada-*", "delete"))
        .await
        .unwrap();
    ada.admin().delete_topic("ada-1").await.unwrap();

    // The cluster: status, users and ACLs.
    denied(ada.access().list_users().await, "describe on the cluster");
    denied(
        ada.access().create_user("eve", "pw").await,
        "alter on the cluster",
    );
    denied(
        ada.access()
            .add_acl(allow("ada", "topic", "*", "all"))
            .await,
        "alter on the cluster",
    );
    access
        .add_acl(allow("ada", "cluster", "*", "describe"))
        .await
        .unwrap();
    assert_eq!(
        ada.access().list_users().await.unwrap(),
        ["ada", "admin", "bob"]
    );

    // Consumer groups.
    let grouped = ada
        .consumer()
        .group("ada-readers")
        .topic("orders")
        .start_at(StartAt::Earliest)
        .build()
        .await;
    let refused = match grouped {
        Ok(mut consumer) => consumer.next().await.expect("an answer").map(|_| ()),
        Err(e) => Err(e),
    };
    denied(refused, "read on group `ada-readers`");
    access
        .add_acl(allow("ada", "group", "ada-*", "read"))
        .await
        .unwrap();
    let mut grouped = ada
        .consumer()
        .group("ada-readers")
        .topic("orders")
        .start_at(StartAt::Earliest)
        .build()
        .await
        .unwrap();
    assert!(grouped.next().await.unwrap().is_ok());

    // Aggregations: creating needs create on it and read on its source; a query, read on
    // the source.
    let spec = strata_client::AggregationSpec {
        name: "ada-count".into(),
        topic: "orders".into(),
        window: "tumbling:1m".into(),
        measures: vec!["count".into()],
        ..Default::default()
    };
    denied(
        ada.aggregations().create(spec.clone()).await,
        "create on aggregation `ada-count`",
    );
    access
        .add_acl(allow("ada", "aggregation", "ada-*", "create"))
        .await
        .unwrap();
    ada.aggregations().create(spec.clone()).await.unwrap();
    ada.aggregations()
        .query("ada-count", None, None, &[])
        .await
        .unwrap();
    let bob = login(&broker, "bob", "bob's password").await.unwrap();
    denied(
        bob.aggregations().query("ada-count", None, None, &[]).await,
        "read on topic `orders`",
    );
    denied(
        bob.aggregations().drop("ada-count").await,
        "delete on aggregation `ada-count`",
    );

    // Search covers only what the caller may read.
    admin
        .producer()
        .build()
        .send_and_wait(ProducerRecord::new("secret", r#"{"n":1}"#))
        .await
        .unwrap();
    let everything = eventually(WAIT, "both records searchable", async || {
        let r = admin
            .search()
            .run(strata_client::SearchQuery::new("n:1").count_only())
            .await
            .ok()?;
        (r.total == 2).then_some(r)
    })
    .await;
    assert_eq!(everything.total, 2);
    let mine = ada
        .search()
        .run(strata_client::SearchQuery::new("n:1").count_only())
        .await
        .unwrap();
    assert_eq!(mine.total, 1, "ada reads orders only");
    denied(
        ada.search()
            .run(strata_client::SearchQuery::new("n:1").topic("secret"))
            .await,
        "read on topic `secret`",
    );
    let nothing = bob
        .search()
        .run(strata_client::SearchQuery::new("n:1").count_only())
        .await
        .unwrap();
    assert_eq!(nothing.total, 0, "bob reads nothing");

    // A user changes its own password: tokens of the old one stop working.
    ada.access()
        .change_password("ada", "ada's new password")
        .await
        .unwrap();
    let stale = ada.admin().describe_topic("orders").await.unwrap_err();
    assert_eq!(stale.code(), Some(ErrorCode::Unauthenticated), "{stale}");
    assert!(login(&broker, "ada", "ada's password").await.is_err());
    let ada = login(&broker, "ada", "ada's new password").await.unwrap();
    ada.admin().describe_topic("orders").await.unwrap();
    // A deleted user's tokens stop working too.
    access.delete_user("ada").await.unwrap();
    let gone = ada.admin().describe_topic("orders").await.unwrap_err();
    assert_eq!(gone.code(), Some(ErrorCode::Unauthenticated), "{gone}");
    let rules = access.list_acls().await.unwrap();
    assert!(
        rules.iter().any(|r| r.principal == "ada"),
        "rules outlive users, as in Kafka"
    );
}

/// A bearer token for `user` from the node at `address`, with the raw API.
async fn token(address: &str, user: &str, password: &str) -> String {
    let mut access =
        strata_proto::v1::access_client::AccessClient::connect(format!("http://{address}"))
            .await
            .unwrap();
    let login = strata_proto::v1::LoginRequest {
        user: user.into(),
        password: password.into(),
    };
    access.login(login).await.unwrap().into_inner().token
}

/// `message` as a request carrying `token`.
fn as_user<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

/// t32: with a login required, an idempotent producer id is issued to the user that asked
/// for it and accepted only from that user: another user (with write on the topic) who sends
/// batches under it is refused and stores nothing, so it cannot fence or disturb the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t32_producer_ids_belong_to_the_user_they_were_issued_to() {
    use strata_proto::v1;
    let (broker, admin) = requiring_logins().await;
    admin
        .admin()
        .create_topic("shared", TopicSpec::partitions(1))
        .await
        .unwrap();
    for user in ["ada", "bob"] {
        admin.access().create_user(user, "pw").await.unwrap();
        let rule = strata_client::acl_rule(user, "topic", "shared", "write");
        admin.access().add_acl(rule).await.unwrap();
    }
    let address = broker.address();
    let (ada, bob) = (
        token(&address, "ada", "pw").await,
        token(&address, "bob", "pw").await,
    );
    let mut rpc = v1::produce_client::ProduceClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    let issued = rpc
        .init_producer(as_user(&ada, v1::InitProducerRequest {}))
        .await
        .unwrap()
        .into_inner();
    let produce = |seq: i32, value: &str| {
        let mut b = strata_storage::BatchBuilder::new();
        b.push(strata_storage::NewRecord::value(1, value.as_bytes()))
            .unwrap();
        let batch = b
            .producer(issued.producer_id, issued.producer_epoch as i16, seq)
            .finish()
            .unwrap()
            .into_bytes();
        v1::ProduceRequest {
            topic: "shared".into(),
            batches: vec![v1::PartitionBatch {
                partition: 0,
                batch,
            }],
            acks: v1::Acks::All as i32,
            timeout_ms: 0,
        }
    };
    let answer = |r: tonic::Response<v1::ProduceResponse>| r.into_inner().results.remove(0);
    let first = answer(rpc.produce(as_user(&ada, produce(0, "a0"))).await.unwrap());
    assert!(first.error.is_none(), "{first:?}");
    let forged = answer(rpc.produce(as_user(&bob, produce(1, "b1"))).await.unwrap());
    let error = forged.error.expect("bob may not use ada's producer id");
    assert_eq!(error.code(), v1::ErrorCode::PermissionDenied, "{error:?}");
    assert!(
        error.message.contains("was not issued to user `bob`"),
        "{error:?}"
    );
    // Ada's next batch follows on: bob's disturbed nothing.
    let next = answer(rpc.produce(as_user(&ada, produce(1, "a1"))).await.unwrap());
    assert!(next.error.is_none(), "{next:?}");
    assert_eq!(next.base_offset, 1);
}

/// t33: every authentication failure, permission denial and administrative change is
/// written to the `_audit` topic (who, what, on what, when, result), searchable like any
/// topic, and only superusers read it: a user granted read on every topic still cannot, and
/// no client creates a topic whose name starts with `_`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t33_refusals_and_changes_are_audited_for_superusers_only() {
    let (broker, admin) = requiring_logins().await;
    assert!(login(&broker, "admin", "guess").await.is_err());
    admin
        .admin()
        .create_topic("orders", TopicSpec::partitions(1))
        .await
        .unwrap();
    admin.access().create_user("ada", "pw").await.unwrap();
    let everything = strata_client::acl_rule("ada", "topic", "*", "read");
    admin.access().add_acl(everything).await.unwrap();
    let ada = login(&broker, "ada", "pw").await.unwrap();
    denied(
        ada.producer()
            .retries(0)
            .build()
            .send_and_wait(ProducerRecord::new("orders", "x"))
            .await,
        "write on topic `orders`",
    );
    let internal = admin
        .admin()
        .create_topic("_mine", TopicSpec::partitions(1))
        .await
        .unwrap_err();
    assert!(
        internal.to_string().contains("Strata's own topics"),
        "{internal}"
    );

    // The audit topic holds each event once written (asynchronously), as JSON.
    let wanted = [
        ("admin", "Access/Login", "unauthenticated"),
        ("admin", "Admin/CreateTopic", "ok"),
        ("admin", "Access/CreateUser", "ok"),
        ("admin", "Access/AddAcl", "ok"),
        ("ada", "write on topic `orders`", "denied"),
    ];
    let events = eventually(WAIT, "the audit events", async || {
        admin.admin().describe_topic("_audit").await.ok()?;
        let mut consumer = strata_tests::reader(&admin, "_audit", [0], StartAt::Earliest).await;
        let mut events = Vec::new();
        while let Ok(Some(Ok(r))) =
            tokio::time::timeout(std::time::Duration::from_millis(500), consumer.next()).await
        {
            let v: serde_json::Value = serde_json::from_slice(r.value.as_deref()?).ok()?;
            events.push(v);
        }
        let all_there = wanted.iter().all(|(who, what, result)| {
            events
                .iter()
                .any(|e| e["principal"] == *who && e["action"] == *what && e["result"] == *result)
        });
        all_there.then_some(events)
    })
    .await;
    for e in &events {
        assert!(e["ts"].as_i64().unwrap() > 0 && e["node"] == 1, "{e}");
    }
    // Searchable like any topic, by superusers.
    let found = eventually(WAIT, "audit events searchable", async || {
        let r = admin
            .search()
            .run(strata_client::SearchQuery::new("result:denied").topic("_audit"))
            .await
            .ok()?;
        (r.total >= 1).then_some(r)
    })
    .await;
    assert!(found.hits.iter().all(|h| h.topic == "_audit"));
    // Not by anyone else, whatever the rules say.
    denied(
        ada.search()
            .run(strata_client::SearchQuery::new("*").topic("_audit"))
            .await,
        "read on topic `_audit`",
    );
    let mine = ada
        .search()
        .run(strata_client::SearchQuery::new("*").count_only())
        .await
        .unwrap();
    assert_eq!(
        mine.total, 0,
        "a search of every topic leaves the audit topic out"
    );
    let listed = strata_tests::topic_names(&ada).await;
    assert_eq!(listed, ["orders"]);
}
