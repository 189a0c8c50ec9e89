//! `strata dev`: a local cluster in this process (three nodes by default), with optional
//! demo data.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;
use strata_broker::config::Peers;
use strata_broker::tls::ClusterCa;
use strata_broker::{Broker, Config, Fsync};

use crate::{demo, output};

/// `strata dev` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Nodes to run (each a full node with its own Raft replicas and data directory).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub nodes: u64,
    /// Where the nodes keep their data (`<dir>/node-<id>`).
    #[arg(long, default_value = "strata-data")]
    pub data_dir: PathBuf,
    /// gRPC address of node 1; node N listens on the port N-1 above it.
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub listen: SocketAddr,
    /// Peer listener (Raft, node-to-node calls) of node 1; node N on the port N-1 above.
    #[arg(long, default_value = "127.0.0.1:7201")]
    pub peer_listen: SocketAddr,
    /// Operator HTTP address (/health, /metrics) of node 1; node N on the port N-1 above.
    #[arg(long, default_value = "127.0.0.1:7101")]
    pub http: SocketAddr,
    /// Durability: always, never, or an interval such as 100ms.
    #[arg(long, default_value = "always")]
    pub fsync: Fsync,
    /// Serve clients over TLS too (a certificate for localhost and 127.0.0.1 from the dev
    /// CA; clients pass `--tls-ca <data-dir>/tls/ca.pem`).
    #[arg(long)]
    pub tls: bool,
    /// Plain-text peer traffic (to measure what peer TLS costs; loopback only).
    #[arg(long)]
    pub no_peer_tls: bool,
    /// Require a login: creates the superuser `admin` with a fresh password, written to
    /// `<data-dir>/admin-password` and printed.
    #[arg(long)]
    pub auth: bool,
    /// Produce IoT-style demo events into the `sensors` topic.
    #[arg(long)]
    pub demo: bool,
    /// Demo events per second.
    #[arg(long, default_value_t = 200)]
    pub demo_rate: u64,
}

/// The superuser `strata dev --auth` creates.
const ADMIN: &str = "admin";

/// Connects once the cluster answers (with `--auth`, the superuser is created in the
/// background just after the nodes start).
async fn connect_when_ready(
    bootstrap: &str,
    config: strata_client::ClientConfig,
) -> anyhow::Result<strata_client::Client> {
    let mut attempts = 0;
    loop {
        match strata_client::Client::connect_with(bootstrap, config.clone()).await {
            Ok(client) => return Ok(client),
            Err(e) if attempts < 100 => {
                attempts += 1;
                tracing::debug!(error = %e, "the dev cluster is not ready yet");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn shifted(address: SocketAddr, by: u64) -> anyhow::Result<SocketAddr> {
    let port = u64::from(address.port()) + by;
    let port = u16::try_from(port).context("port out of range")?;
    Ok(SocketAddr::new(address.ip(), port))
}

/// Runs `strata dev` until SIGINT or SIGTERM.
pub async fn run(args: Args, json: bool) -> anyhow::Result<()> {
    let mut peers = std::collections::BTreeMap::new();
    for id in 1..=args.nodes {
        peers.insert(id, shifted(args.peer_listen, id - 1)?.to_string());
    }
    // Peer traffic takes the production path: mutual TLS with a throw-away CA, made anew at
    // each start.
    let ids: Vec<u64> = peers.keys().copied().collect();
    let tls_dir = args.data_dir.join("tls");
    let making = || {
        format!(
            "making the dev cluster's certificates in {}",
            tls_dir.display()
        )
    };
    let ca = ClusterCa::generate().with_context(making)?;
    let mut certificates = ca.write_files(&tls_dir, &ids).with_context(making)?;
    let client_tls = if args.tls {
        let names = ["localhost".to_string(), args.listen.ip().to_string()];
        Some(
            ca.write_certificate(&tls_dir, "clients", &names)
                .with_context(making)?,
        )
    } else {
        None
    };
    let admin_password = if args.auth {
        let password = strata_broker::auth::scram::random_password().map_err(anyhow::Error::msg)?;
        let path = args.data_dir.join("admin-password");
        std::fs::create_dir_all(&args.data_dir)?;
        strata_broker::tls::write_private(&path, &password)?;
        Some((password, path))
    } else {
        None
    };
    let mut brokers = Vec::new();
    for id in 1..=args.nodes {
        let config = Config {
            node_id: id,
            listen: shifted(args.listen, id - 1)?,
            peer_listen: shifted(args.peer_listen, id - 1)?,
            peer_tls: certificates.remove(&id).filter(|_| !args.no_peer_tls),
            tls_cert: client_tls.as_ref().map(|(cert, _)| cert.clone()),
            tls_key: client_tls.as_ref().map(|(_, key)| key.clone()),
            auth: args
                .auth
                .then_some(strata_broker::config::AuthMode::Required),
            superusers: if args.auth {
                vec![ADMIN.to_string()]
            } else {
                Vec::new()
            },
            bootstrap_password_file: admin_password.as_ref().map(|(_, path)| path.clone()),
            http: Some(shifted(args.http, id - 1)?),
            data_dir: args.data_dir.join(format!("node-{id}")),
            fsync: args.fsync,
            peers: Peers(peers.clone()),
            ..Config::default()
        };
        let broker = Broker::start(config)
            .await
            .with_context(|| format!("starting node {id}"))?;
        brokers.push(broker);
    }
    let addresses: Vec<String> = brokers.iter().map(|b| b.address().to_string()).collect();
    let bootstrap = addresses.join(",");
    if json {
        output::json(&json!({
            "nodes": brokers.iter().enumerate().map(|(i, b)| json!({
                "id": i + 1,
                "grpc": b.address().to_string(),
                "peer": b.peer_address().to_string(),
                "http": b.http_address().map(|a| a.to_string()),
            })).collect::<Vec<_>>(),
            "data_dir": args.data_dir.display().to_string(),
            "demo": args.demo,
        }));
    } else {
        let nodes = if args.nodes == 1 {
            "1 node".to_string()
        } else {
            format!(
                "{} nodes, replication factor {}",
                args.nodes,
                args.nodes.min(3)
            )
        };
        println!(
            "Strata is running: {nodes}, data in {}",
            args.data_dir.display()
        );
        for (i, b) in brokers.iter().enumerate() {
            let http = b
                .http_address()
                .map(|h| format!("   health http://{h}/health   metrics http://{h}/metrics"))
                .unwrap_or_default();
            println!(
                "  node {}  gRPC {}   peers {}{}{http}",
                i + 1,
                b.address(),
                b.peer_address(),
                if args.no_peer_tls {
                    ""
                } else {
                    " (mutual TLS)"
                },
            );
        }
        println!("  STRATA_BROKERS={bootstrap}");
        if args.tls {
            println!(
                "  STRATA_TLS_CA={}   (clients connect with TLS)",
                tls_dir.join("ca.pem").display()
            );
        }
        if let Some((password, path)) = &admin_password {
            println!(
                "  STRATA_USER={ADMIN} STRATA_PASSWORD={password}   (also in {})",
                path.display()
            );
        }
        if args.demo {
            println!(
                "  demo     {} events/s of IoT readings into topic `{}`",
                args.demo_rate,
                demo::TOPIC
            );
            println!(
                "\nTry, in another terminal:\n  strata cluster status\n  strata topic describe sensors\n  strata consume sensors --follow\n  strata agg query site-alarms-1m --since 10m\n  strata agg watch device-temperature-1m --where device=sensor-0001\n  strata search 'status:alarm AND site:oslo' --since 15m\n  strata search 'temperature:[30 TO *]' --count --histogram 1m\n  strata bench produce"
            );
        } else {
            println!(
                "\nTry, in another terminal:\n  strata cluster status\n  strata topic create events --partitions 8\n  echo '{{\"hello\":1}}' | strata produce events\n  strata consume events"
            );
        }
        println!("\nCtrl-C stops it (data is kept).");
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let generator = if args.demo {
        let config = strata_client::ClientConfig {
            tls: client_tls
                .is_some()
                .then(|| strata_client::ClientTls::from_ca_file(&tls_dir.join("ca.pem")))
                .transpose()?,
            credentials: admin_password
                .as_ref()
                .map(|(password, _)| strata_client::Credentials {
                    user: ADMIN.to_string(),
                    password: password.clone(),
                }),
            ..Default::default()
        };
        let client = connect_when_ready(&bootstrap, config).await?;
        Some(tokio::spawn(demo::run(client, args.demo_rate, stopped)))
    } else {
        None
    };
    strata_broker::process::shutdown_signal().await;
    stop.send_replace(true);
    if let Some(generator) = generator {
        match generator.await {
            Ok(Err(e)) => eprintln!("demo generator: {e}"),
            Err(e) => eprintln!("demo generator: {e}"),
            Ok(Ok(())) => {}
        }
    }
    for broker in brokers {
        broker.shutdown().await?;
    }
    if !json {
        println!("stopped");
    }
    Ok(())
}
