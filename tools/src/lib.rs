//! # strata-tools
//!
//! The `strata` command, the one tool a person uses: a local node (`strata dev`), topics,
//! producing from stdin, consuming to stdout, consumer groups, and benchmarks. `main.rs` only
//! parses the command line; each command lives in `commands::*`.
//!
//! # Layout
//! - [`Cli`]: the command line (clap), with `--brokers` (env `STRATA_BROKERS`) and `--json`.
//! - `commands`: `dev`, `topic`, `produce`, `consume`, `group`, `agg`, `search`, `bench`.
//! - `demo`: the IoT event generator of `strata dev --demo`.
//! - `output`: tables and JSON; `units`: sizes and durations.

// A command-line tool prints by design.
#![allow(clippy::print_stdout, clippy::print_stderr)]
#![forbid(unsafe_code)]

pub mod commands;
pub mod demo;
mod output;
pub mod units;

use clap::{Parser, Subcommand};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "strata",
    version,
    about = "Strata: a replicated event store and broker for real-time analytics",
    long_about = "Strata: a replicated event store and broker for real-time analytics.\n\n\
Start a local three-node cluster with demo data: `strata dev --demo`. Then, in another \
terminal: `strata cluster status`, `strata topic list`, `strata consume sensors --follow`, \
`strata bench produce`.\n\n\
Every command talks to --brokers (env STRATA_BROKERS, default the three `strata dev` nodes \
127.0.0.1:7001-7003), with --tls-ca (STRATA_TLS_CA) for TLS and --user/--password \
(STRATA_USER/STRATA_PASSWORD) for clusters that require a login, and prints \
tables for people, or one JSON object per line with --json."
)]
pub struct Cli {
    /// Where and how to connect.
    #[command(flatten)]
    pub connection: commands::Connection,
    /// Machine-readable output: one JSON object per line.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a local cluster in this process (three nodes, data in ./strata-data/node-N),
    /// optionally with demo data.
    Dev(commands::dev::Args),
    /// Cluster health: nodes, leaders, commit indexes, replica lag.
    #[command(subcommand)]
    Cluster(commands::cluster::ClusterCommand),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(commands::topic::TopicCommand),
    /// Produce one record per line of standard input.
    Produce(commands::produce::Args),
    /// Print records of a topic.
    Consume(commands::consume::Args),
    /// List and describe consumer groups.
    #[command(subcommand)]
    Group(commands::group::GroupCommand),
    /// Windowed aggregations: create, list, describe, drop, query, watch.
    #[command(subcommand)]
    Agg(commands::agg::AggCommand),
    /// Search events: hits, counts, histograms over time, or new matches as they arrive.
    Search(commands::search::Args),
    /// Measure throughput and latency.
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
    /// Create, list and delete users, change passwords.
    #[command(subcommand)]
    User(commands::access::UserCommand),
    /// Add, list and remove ACL allow rules.
    #[command(subcommand)]
    Acl(commands::access::AclCommand),
    /// Who you are logged in as.
    Whoami,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => commands::dev::run(args, cli.json).await,
        Command::Cluster(cmd) => commands::cluster::run(cmd, &cli.connection, cli.json).await,
        Command::Topic(cmd) => commands::topic::run(cmd, &cli.connection, cli.json).await,
        Command::Produce(args) => commands::produce::run(args, &cli.connection, cli.json).await,
        Command::Consume(args) => commands::consume::run(args, &cli.connection, cli.json).await,
        Command::Group(cmd) => commands::group::run(cmd, &cli.connection, cli.json).await,
        Command::Agg(cmd) => commands::agg::run(cmd, &cli.connection, cli.json).await,
        Command::Search(args) => commands::search::run(args, &cli.connection, cli.json).await,
        Command::Bench(cmd) => commands::bench::run(cmd, &cli.connection, cli.json).await,
        Command::User(cmd) => commands::access::user(cmd, &cli.connection, cli.json).await,
        Command::Acl(cmd) => commands::access::acl(cmd, &cli.connection, cli.json).await,
        Command::Whoami => commands::access::whoami(&cli.connection, cli.json).await,
    }
}
