//! Multi-node harness: real `strata-test-node` processes on loopback ports, peer traffic over
//! mutual TLS with a CA made for the cluster, every peer link between two nodes through a
//! [`Proxy`] the test can cut, nodes killed with SIGKILL and restarted on the same data
//! directory and ports, paused with SIGSTOP, their wall clocks skewed, and one node's data
//! directory on a small file system of its own that a test fills.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use strata_broker::Config;
use strata_broker::config::Peers;
use strata_broker::tls::ClusterCa;
use strata_client::Client;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::eventually;

/// A TCP forwarder for one direction of one link (the Raft traffic node A sends to node B).
/// While cut, it drops every connection, open or new.
pub struct Proxy {
    address: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a free port forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let address = listener.local_addr().expect("proxy address");
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let task = tokio::spawn({
            let cut = cut.clone();
            let generation = generation.clone();
            async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        return;
                    };
                    if cut.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let mut cut_off = generation.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let mut inbound = inbound;
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut_off.changed() => {}
                        }
                    });
                }
            }
        });
        Proxy {
            address,
            cut,
            generation,
            task,
        }
    }

    /// Where to connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Drops every connection and refuses new ones until [`Proxy::heal`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

/// One node process.
pub struct TestNode {
    /// Its id.
    pub id: u64,
    /// Its client address.
    pub address: SocketAddr,
    /// Its peer listener's address (other nodes reach it through proxies).
    pub peer_address: SocketAddr,
    /// Its peer TLS files, if peer TLS is on.
    pub peer_tls: Option<strata_broker::tls::TlsFiles>,
    dir: PathBuf,
    config_path: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// Its data directory is a small file system of its own (see [`ClusterOptions`]).
    small_disk: bool,
}

impl TestNode {
    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Fails the disk under the node's partition logs (every flush there fails as a failing
    /// `fsync` does, and so does opening a log) until [`TestNode::heal_disk`].
    pub fn fail_disk(&self) {
        std::fs::write(self.disk_failure_marker(), b"").expect("disk failure marker written");
    }

    /// Undoes [`TestNode::fail_disk`].
    pub fn heal_disk(&self) {
        std::fs::remove_file(self.disk_failure_marker()).expect("disk failure marker removed");
    }

    fn disk_failure_marker(&self) -> PathBuf {
        (self.data_dir().join("topics")).join(strata_storage::fault::FAIL_DISK_MARKER)
    }

    /// Whether its process runs (paused or not).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether its process is paused ([`TestCluster::pause`]).
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Whether its data directory is a small file system of its own, which
    /// [`TestNode::fill_disk`] fills.
    pub fn has_small_disk(&self) -> bool {
        self.small_disk
    }

    /// Moves the node's wall clock `skew_ms` from the real one (negative: behind); it
    /// follows within 50 ms, without a restart, and keeps the skew across restarts until
    /// it is set to 0.
    pub fn skew_clock(&self, skew_ms: i64) {
        std::fs::write(self.clock_skew_file(), skew_ms.to_string()).expect("clock skew written");
    }

    fn clock_skew_file(&self) -> PathBuf {
        self.dir.join("clock-skew")
    }

    fn ballast(&self) -> PathBuf {
        self.data_dir().join("BALLAST")
    }

    /// Fills the node's small file system (every write there then fails with `ENOSPC`)
    /// until [`TestNode::free_disk`]; returns the bytes it took.
    pub fn fill_disk(&self) -> u64 {
        assert!(self.small_disk, "node {} has no small disk", self.id);
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.ballast())
            .expect("ballast file");
        let mut written = 0u64;
        for chunk in [1 << 20, 4096, 512] {
            let zeros = vec![0u8; chunk];
            while file.write_all(&zeros).is_ok() {
                written += chunk as u64;
            }
        }
        let _ = file.sync_all();
        written
    }

    /// Frees what [`TestNode::fill_disk`] took.
    pub fn free_disk(&self) {
        let _ = std::fs::remove_file(self.ballast());
    }

    /// Its log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    /// The end of its log file (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// What [`TestCluster::start_with`] sets up beside the nodes.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Puts this node's data directory on an ext4 file system of this many bytes of its
    /// own (a loop mount; needs root), so that a test can fill it. If the machine cannot
    /// mount one, the node runs on the ordinary disk and [`TestNode::has_small_disk`] says
    /// so.
    pub small_disk: Option<(u64, u64)>,
}

/// Mounts a fresh ext4 file system of `bytes` at `dir` (an image file beside it, looped);
/// the reason if the machine cannot.
fn mount_small_disk(dir: &Path, bytes: u64) -> Result<(), String> {
    let image = dir.with_extension("img");
    let run = |program: &str, args: &[&std::ffi::OsStr]| -> Result<(), String> {
        let out = Command::new(program)
            .args(args)
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
    file.set_len(bytes).map_err(|e| e.to_string())?;
    // No blocks reserved for root: the tests run as root and must see the disk full.
    run(
        "mkfs.ext4",
        &["-q", "-F", "-m", "0"]
            .map(std::ffi::OsStr::new)
            .into_iter()
            .chain([image.as_os_str()])
            .collect::<Vec<_>>(),
    )?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    run(
        "mount",
        &[
            std::ffi::OsStr::new("-o"),
            std::ffi::OsStr::new("loop"),
            image.as_os_str(),
            dir.as_os_str(),
        ],
    )
}

/// A cluster of node processes with a proxy on every directed link.
pub struct TestCluster {
    /// The nodes, by index (node id = index + 1).
    pub nodes: Vec<TestNode>,
    proxies: BTreeMap<(u64, u64), Proxy>,
    /// The CA that signed the nodes' peer certificates (tests issue more with it).
    pub ca: ClusterCa,
    binary: PathBuf,
    _dir: tempfile::TempDir,
}

/// A free port for a node, below the kernel's ephemeral range: a node killed and restarted
/// must get its port back, and ports from the ephemeral range (what port 0 and outgoing
/// connections use) can be taken by any connection while the node is down. No port is handed
/// out twice by one test process.
fn free_port() -> SocketAddr {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    use rand::{Rng, SeedableRng};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.saturating_sub(1).max(10_100));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()) << 32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..1000 {
        let address = SocketAddr::from(([127, 0, 0, 1], rng.random_range(low..high)));
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.contains(&address.port()) && std::net::TcpListener::bind(address).is_ok() {
            given.insert(address.port());
            return address;
        }
    }
    panic!("no free port between {low} and {high}");
}

impl TestCluster {
    /// Starts `n` nodes from `binary` (the test's `CARGO_BIN_EXE_strata-test-node`), with
    /// peer TLS on and `tweak` applied to every node's configuration, and waits until they
    /// serve.
    pub async fn start(binary: &str, n: u64, tweak: impl Fn(&mut Config)) -> TestCluster {
        Self::start_with(binary, n, ClusterOptions::default(), tweak).await
    }

    /// [`TestCluster::start`] with `options`.
    #[allow(clippy::print_stderr)]
    pub async fn start_with(
        binary: &str,
        n: u64,
        options: ClusterOptions,
        tweak: impl Fn(&mut Config),
    ) -> TestCluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let addresses: BTreeMap<u64, SocketAddr> = (1..=n).map(|id| (id, free_port())).collect();
        let peer_addresses: BTreeMap<u64, SocketAddr> =
            (1..=n).map(|id| (id, free_port())).collect();
        let ids: Vec<u64> = (1..=n).collect();
        let ca = ClusterCa::generate().expect("cluster CA");
        let mut certificates = ca
            .write_files(&dir.path().join("tls"), &ids)
            .expect("cluster certificates");
        let mut proxies = BTreeMap::new();
        for from in 1..=n {
            for to in 1..=n {
                if from != to {
                    proxies.insert((from, to), Proxy::start(peer_addresses[&to]).await);
                }
            }
        }
        let mut nodes = Vec::new();
        for id in 1..=n {
            let node_dir = dir.path().join(format!("node-{id}"));
            std::fs::create_dir_all(&node_dir).expect("node directory");
            let small_disk = match options.small_disk {
                Some((node, bytes)) if node == id => {
                    match mount_small_disk(&node_dir.join("data"), bytes) {
                        Ok(()) => true,
                        Err(why) => {
                            eprintln!("node {id} runs without a small disk: {why}");
                            false
                        }
                    }
                }
                _ => false,
            };
            let peers: BTreeMap<u64, String> = (1..=n)
                .map(|other| {
                    let address = if other == id {
                        peer_addresses[&id]
                    } else {
                        proxies[&(id, other)].address()
                    };
                    (other, address.to_string())
                })
                .collect();
            let mut config = Config {
                node_id: id,
                listen: addresses[&id],
                peer_listen: peer_addresses[&id],
                peer_tls: certificates.remove(&id),
                // (A TOML file cannot say "no HTTP": give it a port of its own.)
                http: Some(free_port()),
                data_dir: node_dir.join("data"),
                segment_bytes: 8 << 20,
                max_batch_bytes: 1 << 20,
                peers: Peers(peers),
                advertise: Some(addresses[&id].to_string()),
                ..Config::default()
            };
            tweak(&mut config);
            let config_path = node_dir.join("config.toml");
            let toml = toml::to_string(&config).expect("config serializes");
            std::fs::write(&config_path, toml).expect("config written");
            nodes.push(TestNode {
                id,
                address: addresses[&id],
                peer_address: peer_addresses[&id],
                peer_tls: config.peer_tls.clone(),
                dir: node_dir,
                config_path,
                child: None,
                paused: false,
                small_disk,
            });
        }
        let mut cluster = TestCluster {
            nodes,
            proxies,
            ca,
            // `STRATA_TEST_NODE_BIN` runs another build of the node (a soak run of copied
            // binaries while the tree is rebuilt).
            binary: std::env::var_os("STRATA_TEST_NODE_BIN")
                .map_or_else(|| PathBuf::from(binary), PathBuf::from),
            _dir: dir,
        };
        for id in 1..=n {
            cluster.spawn(id);
        }
        for id in 1..=n {
            cluster.wait_serving(id).await;
        }
        cluster
    }

    fn node_mut(&mut self, id: u64) -> &mut TestNode {
        &mut self.nodes[(id - 1) as usize]
    }

    /// A node by id.
    pub fn node(&self, id: u64) -> &TestNode {
        &self.nodes[(id - 1) as usize]
    }

    fn spawn(&mut self, id: u64) {
        let binary = self.binary.clone();
        let node = self.node_mut(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log_path())
            .expect("log file");
        let child = Command::new(&binary)
            .arg(&node.config_path)
            // `STRATA_TEST_NODE_LOG` overrides the nodes' log filter when debugging a test.
            .env(
                "STRATA_LOG",
                std::env::var("STRATA_TEST_NODE_LOG")
                    .unwrap_or_else(|_| "info,openraft=warn".to_string()),
            )
            // Lets a test fail the node's disk (`TestNode::fail_disk`).
            .env("STRATA_FAULT_INJECTION", "1")
            .env("STRATA_CLOCK_SKEW_FILE", node.clock_skew_file())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("node process starts");
        node.child = Some(child);
    }

    /// Waits until the node answers health checks.
    pub async fn wait_serving(&self, id: u64) {
        let address = self.node(id).address.to_string();
        let node = self.node(id);
        let serving = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match Client::connect(&address).await {
                    Ok(client) if client.admin().list_topics().await.is_ok() => return,
                    // A node that requires a login answers, so it serves.
                    Err(e) if e.to_string().contains("UNAUTHENTICATED") => return,
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            serving.is_ok(),
            "node {id} did not start serving; its log ends:\n{}",
            node.log_tail(30)
        );
    }

    /// SIGKILLs a node (paused or not).
    pub fn kill(&mut self, id: u64) {
        let node = self.node_mut(id);
        node.paused = false;
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, id: u64, signal: &str) {
        if let Some(child) = &self.node(id).child {
            let _ = Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Pauses a running node with SIGSTOP (as a long GC pause, a stalled VM or a full
    /// disk's blocked writes would) until [`TestCluster::resume`].
    pub fn pause(&mut self, id: u64) {
        if self.node(id).is_running() && !self.node(id).paused {
            self.signal(id, "-STOP");
            self.node_mut(id).paused = true;
        }
    }

    /// Lets a paused node run on (SIGCONT).
    pub fn resume(&mut self, id: u64) {
        if self.node(id).paused {
            self.signal(id, "-CONT");
            self.node_mut(id).paused = false;
        }
    }

    /// Stops a node with SIGTERM (a clean shutdown) and waits for it to exit.
    pub fn stop(&mut self, id: u64) {
        self.resume(id);
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    /// Starts a stopped or killed node again on its data directory and port.
    pub async fn restart(&mut self, id: u64) {
        self.kill(id);
        self.spawn(id);
        self.wait_serving(id).await;
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: u64) {
        for ((from, to), proxy) in &self.proxies {
            if *from == id || *to == id {
                proxy.cut();
            }
        }
    }

    /// Cuts the links between `a` and `b`, both ways.
    pub fn cut(&self, a: u64, b: u64) {
        self.proxies[&(a, b)].cut();
        self.proxies[&(b, a)].cut();
    }

    /// Cuts the link from `from` to `to` only: `from`'s calls to `to` fail while `to`'s
    /// calls to `from` (and their answers) go through.
    pub fn cut_one_way(&self, from: u64, to: u64) {
        self.proxies[&(from, to)].cut();
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        for proxy in self.proxies.values() {
            proxy.heal();
        }
    }

    /// Every running node's client address, comma-separated (a bootstrap list).
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.address.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client bootstrapped from every node.
    pub async fn client(&self) -> Client {
        Client::connect(&self.bootstrap())
            .await
            .expect("client connects")
    }

    /// A client of one node only.
    pub async fn client_of(&self, id: u64) -> Client {
        Client::connect(&self.node(id).address.to_string())
            .await
            .expect("client connects")
    }

    /// A connection to node `id`'s peer listener as a member would open it (presenting
    /// node `id`'s own certificate when peer TLS is on), for calls only peers may make.
    pub async fn peer_channel(&self, id: u64) -> Option<tonic::transport::Channel> {
        let node = self.node(id);
        let Some(files) = &node.peer_tls else {
            return Endpoint::from_shared(format!("http://{}", node.peer_address))
                .ok()?
                .connect()
                .await
                .ok();
        };
        let read = |path: &Path| std::fs::read_to_string(path).expect("certificate files");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&files.ca)))
            .identity(Identity::from_pem(read(&files.cert), read(&files.key)))
            .domain_name(strata_broker::tls::node_name(id));
        Endpoint::from_shared(format!("https://{}", node.peer_address))
            .ok()?
            .tls_config(tls)
            .ok()?
            .connect()
            .await
            .ok()
    }

    /// The node leading a partition, as the cluster's metadata says, once one is known.
    pub async fn leader_of(&self, topic: &str, partition: u32) -> u64 {
        eventually(Duration::from_secs(20), "a partition leader", async || {
            for node in self.nodes.iter().filter(|n| n.is_running()) {
                let Ok(client) = Client::connect(&node.address.to_string()).await else {
                    continue;
                };
                let Ok(t) = client.admin().describe_topic(topic).await else {
                    continue;
                };
                // A replica that leads says so about itself.
                if let Some(p) = t.partitions.iter().find(|p| p.partition == partition)
                    && p.leader == node.id
                {
                    return Some(node.id);
                }
            }
            None
        })
        .await
    }

    /// A topic's id (its directories are named by it), asked of a running node.
    pub async fn topic_id(&self, topic: &str) -> u32 {
        self.client()
            .await
            .admin()
            .describe_topic(topic)
            .await
            .expect("the topic exists")
            .id
    }

    /// Directories of a partition's replicas (`topics/<topic id>/<partition>`) on every node.
    pub fn replica_dirs(&self, topic_id: u32, partition: u32) -> Vec<(u64, PathBuf)> {
        self.nodes
            .iter()
            .filter_map(|n| {
                let dir = n
                    .data_dir()
                    .join("topics")
                    .join(topic_id.to_string())
                    .join(partition.to_string());
                dir.exists().then_some((n.id, dir))
            })
            .collect()
    }
}

impl Drop for TestCluster {
    #[allow(clippy::print_stderr)]
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The data directories go with the test: show what the nodes said.
            // `STRATA_TEST_KEEP_LOGS=<dir>` keeps each node's whole log there.
            let keep = std::env::var_os("STRATA_TEST_KEEP_LOGS").map(PathBuf::from);
            for node in &self.nodes {
                eprintln!(
                    "---- node {} log (end) ----\n{}",
                    node.id,
                    node.log_tail(40)
                );
                if let Some(dir) = &keep {
                    let to = dir.join(format!("node-{}.log", node.id));
                    let kept = std::fs::create_dir_all(dir)
                        .and_then(|()| std::fs::copy(node.log_path(), &to));
                    eprintln!("node {} log kept in {}: {kept:?}", node.id, to.display());
                }
            }
        }
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            self.kill(id);
        }
        for node in self.nodes.iter().filter(|n| n.small_disk) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(node.data_dir())
                .status();
        }
    }
}

/// Reads every entry of a stopped replica's log: (log id, body).
pub fn read_log(dir: &Path) -> Vec<(strata_storage::LogId, bytes::Bytes)> {
    let log = strata_storage::PartitionLog::open(
        dir,
        strata_storage::LogConfig {
            segment_bytes: 8 << 20,
            max_entry_bytes: (1 << 20) + 64,
            ..Default::default()
        },
    )
    .expect("replica log opens");
    let state = log.state();
    let entries = log
        .entries(state.first_index..state.next_index, usize::MAX)
        .expect("entries read");
    entries.into_iter().map(|e| (e.log_id, e.body)).collect()
}
