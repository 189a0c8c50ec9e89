//! `strata dev`: a local cluster in this process (three nodes by default), with optional
//! demo data.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;
use strata_broker::config::Peers;
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
    /// Produce IoT-style demo events into the `sensors` topic.
    #[arg(long)]
    pub demo: bool,
    /// Demo events per second.
    #[arg(long, default_value_t = 200)]
    pub demo_rate: u64,
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
    let mut certificates = strata_broker::tls::write_dev_certificates(&tls_dir, &ids)
        .with_context(|| {
            format!(
                "making the dev cluster's certificates in {}",
                tls_dir.display()
            )
        })?;
    let mut brokers = Vec::new();
    for id in 1..=args.nodes {
        let config = Config {
            node_id: id,
            listen: shifted(args.listen, id - 1)?,
            peer_listen: shifted(args.peer_listen, id - 1)?,
            peer_tls: certificates.remove(&id),
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
                "  node {}  gRPC {}   peers {} (mutual TLS){http}",
                i + 1,
                b.address(),
                b.peer_address()
            );
        }
        println!("  STRATA_BROKERS={bootstrap}");
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
        let client = strata_client::Client::connect(&bootstrap).await?;
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
