//! `strata dev`: a local node in this process, with optional demo data.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;
use strata_broker::{Broker, Config, Fsync};

use crate::{demo, output};

/// `strata dev` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the node keeps its data.
    #[arg(long, default_value = "strata-data")]
    pub data_dir: PathBuf,
    /// gRPC address.
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub listen: SocketAddr,
    /// Operator HTTP address (/health, /metrics).
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

/// Runs `strata dev` until SIGINT or SIGTERM.
pub async fn run(args: Args, json: bool) -> anyhow::Result<()> {
    let config = Config {
        listen: args.listen,
        http: Some(args.http),
        data_dir: args.data_dir.clone(),
        fsync: args.fsync,
        ..Config::default()
    };
    let broker = Broker::start(config).await.context("starting the node")?;
    let address = broker.address();
    if json {
        output::json(
            &json!({"grpc": address.to_string(), "http": broker.http_address().map(|a| a.to_string()),
            "data_dir": args.data_dir.display().to_string(), "demo": args.demo}),
        );
    } else {
        println!(
            "Strata is running: 1 node, data in {}",
            args.data_dir.display()
        );
        println!("  gRPC     {address}   (STRATA_BROKERS={address})");
        if let Some(http) = broker.http_address() {
            println!("  health   http://{http}/health");
            println!("  metrics  http://{http}/metrics");
        }
        if args.demo {
            println!(
                "  demo     {} events/s of IoT readings into topic `{}`",
                args.demo_rate,
                demo::TOPIC
            );
            println!(
                "\nTry, in another terminal:\n  strata topic describe sensors\n  strata consume sensors --follow\n  strata bench produce"
            );
        } else {
            println!(
                "\nTry, in another terminal:\n  strata topic create events --partitions 8\n  echo '{{\"hello\":1}}' | strata produce events\n  strata consume events"
            );
        }
        println!("\nCtrl-C stops it (data is kept).");
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let generator = if args.demo {
        let client = strata_client::Client::connect(&address.to_string()).await?;
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
    broker.shutdown().await?;
    if !json {
        println!("stopped");
    }
    Ok(())
}
