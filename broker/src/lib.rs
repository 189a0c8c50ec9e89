//! # strata-broker
//!
//! A Strata node: topics split into partitions over the storage engine, each partition a
//! Raft group whose log is its storage log, windowed aggregations and search indexes kept up
//! to date as records commit, consumer groups, and the `strata.v1` gRPC services.
//! [`Broker::start`] runs a node in-process (tests and `strata dev` do); [`run`] runs one
//! until a shutdown signal; the `strata-broker` binary wraps `run` with flags, a TOML file
//! and environment variables.
//!
//! ```no_run
//! # async fn demo() -> Result<(), strata_broker::Error> {
//! let any_port = "127.0.0.1:0".parse().unwrap();
//! let config = strata_broker::Config { listen: any_port, peer_listen: any_port, http: None, ..Default::default() };
//! let broker = strata_broker::Broker::start(config).await?;
//! println!("serving on {}", broker.address());
//! broker.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! Bottom up; each module imports only those before it in this list. ARCHITECTURE.md has a
//! paragraph per module on what it owns and may import.
//! - [`config`], [`error`](Error), `names` (naming rules), `lock`, [`process`], [`tls`]
//!   (peer certificates and the peer listener's gate): the ground floor.
//! - [`raft`]: openraft glue only: the log store over a storage log, the state-machine
//!   adapter over a domain [`raft::Machine`], snapshots, the group handle, the peer service
//!   and network. It imports no domain module.
//! - The pure halves of the features, which replicas apply and hold: [`agg`] (definitions,
//!   state, the fold) and [`search`] (`index`, `writer`, `schema`, `query`).
//! - [`controller`]: the cluster's metadata state machine, commands and their validation,
//!   topic settings, and proposing from any node ([`controller::Cluster`]).
//! - [`replica`]: one partition replica: append (producer de-duplication), read, its state
//!   machine (high watermark, producers, the aggregations' fold), retention.
//! - `search::feed`: the indexer of each replica.
//! - [`topics`]: the topics and replicas this node holds, following the controller.
//! - The services and tasks over the topics: `agg::{query, reconcile, emit}`,
//!   `search::scatter`, [`groups`] (the consumer-group coordinator).
//! - `node` (the state the front doors share), `metrics`.
//! - `api`: the front doors (`api::grpc`, `api::http`), converting and nothing more.
//! - `server`: start, serve, background tasks, shutdown.
#![forbid(unsafe_code)]

pub mod agg;
mod api;
pub mod auth;
mod budget;
pub mod config;
pub mod controller;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod groups;
mod lock;
mod metrics;
mod names;
mod node;
pub mod process;
pub mod raft;
pub mod replica;
pub mod search;
mod server;
pub mod tls;
pub mod topics;

pub use config::{Config, Fsync};
pub use error::{Error, Result};
pub use node::Node;
pub use server::{Broker, run};
