//! Test harness: brokers started in-process on `127.0.0.1:0`, with their data in a
//! temporary directory that outlives restarts.

pub mod cluster;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use strata_broker::{Broker, Config, Fsync};
use strata_client::{Client, Consumer, ConsumerRecord, StartAt, TopicSpec};

/// A broker under test and its data directory.
pub struct TestBroker {
    broker: Option<Broker>,
    dir: tempfile::TempDir,
    config: Config,
}

impl TestBroker {
    /// A node with fsync `always`, no HTTP, on a free port.
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    /// A node with the defaults changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestBroker {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = Config {
            listen: "127.0.0.1:0".parse().expect("address"),
            peer_listen: "127.0.0.1:0".parse().expect("address"),
            http: None,
            data_dir: dir.path().to_path_buf(),
            fsync: Fsync(strata_storage::FsyncPolicy::Always),
            segment_bytes: 8 << 20,
            max_batch_bytes: 1 << 20,
            ..Config::default()
        };
        tweak(&mut config);
        let broker = Broker::start(config.clone()).await.expect("broker starts");
        config.listen = broker.address(); // a restart keeps the ports
        config.peer_listen = broker.peer_address();
        config.http = broker.http_address();
        TestBroker {
            broker: Some(broker),
            dir,
            config,
        }
    }

    fn broker(&self) -> &Broker {
        self.broker.as_ref().expect("running")
    }

    /// `host:port` of the gRPC listener.
    pub fn address(&self) -> String {
        self.broker().address().to_string()
    }

    /// `host:port` of the peer listener.
    pub fn peer_address(&self) -> String {
        self.broker().peer_address().to_string()
    }

    /// The HTTP address, if serving.
    pub fn http_address(&self) -> Option<std::net::SocketAddr> {
        self.broker().http_address()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client connected to this broker.
    pub async fn client(&self) -> Client {
        Client::connect(&self.address())
            .await
            .expect("client connects")
    }

    /// A client of this node, after creating `topic` with `partitions` partitions.
    pub async fn client_with_topic(&self, topic: &str, partitions: u32) -> Client {
        let client = self.client().await;
        if let Err(e) = client
            .admin()
            .create_topic(topic, TopicSpec::partitions(partitions))
            .await
        {
            panic!("creating topic {topic}: {e}");
        }
        client
    }

    /// Stops the node cleanly.
    pub async fn stop(&mut self) {
        if let Some(broker) = self.broker.take() {
            broker.shutdown().await.expect("clean shutdown");
        }
    }

    /// Stops and starts the node on the same data directory and port.
    pub async fn restart(&mut self) {
        self.stop().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Broker::start(self.config.clone()).await {
                Ok(broker) => {
                    self.broker = Some(broker);
                    return;
                }
                // The old listener's port can take a moment to be free again.
                Err(strata_broker::Error::Bind { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("broker restarts: {e}"),
            }
        }
    }
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long a test waits for a record before it fails.
pub const RECORD_WAIT: Duration = Duration::from_secs(30);

/// A consumer of `partitions` of `topic` without a group, starting at `start`.
pub async fn reader(
    client: &Client,
    topic: &str,
    partitions: impl IntoIterator<Item = u32>,
    start: StartAt,
) -> Consumer {
    match client
        .consumer()
        .assign(topic, partitions)
        .start_at(start)
        .build()
        .await
    {
        Ok(consumer) => consumer,
        Err(e) => panic!("building a consumer of {topic}: {e}"),
    }
}

/// The error detail a Strata status carries (every error status carries one).
pub fn error_detail(status: &tonic::Status) -> strata_proto::v1::ErrorDetail {
    prost::Message::decode(status.details()).expect("statuses carry an ErrorDetail")
}

/// The names of the topics `client` may see.
pub async fn topic_names(client: &Client) -> Vec<String> {
    client
        .admin()
        .list_topics()
        .await
        .expect("topics listed")
        .into_iter()
        .map(|t| t.name)
        .collect()
}

/// The consumer's next record; fails the test if none comes within [`RECORD_WAIT`], the
/// stream ends or yields an error.
pub async fn next_record(consumer: &mut Consumer) -> ConsumerRecord {
    match tokio::time::timeout(RECORD_WAIT, consumer.next()).await {
        Ok(Some(Ok(record))) => record,
        Ok(Some(Err(e))) => panic!("the consumer failed: {e}"),
        Ok(None) => panic!("the consumer's stream ended"),
        Err(_) => panic!("no record within {RECORD_WAIT:?}"),
    }
}

/// The path of a workspace binary built by cargo (for CLI tests).
pub fn workspace_target() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
}

/// The `n` field of every search hit's JSON value, sorted; fails the test on a hit without
/// one.
pub fn hit_numbers(hits: &[strata_client::SearchHit]) -> Vec<u64> {
    let mut ns: Vec<u64> = hits
        .iter()
        .map(|h| {
            let value = h.value.as_ref().expect("hit has a value");
            let v: serde_json::Value = serde_json::from_slice(value).expect("JSON value");
            v["n"].as_u64().expect("an `n` field")
        })
        .collect();
    ns.sort_unstable();
    ns
}
