//! # strata-broker
//!
//! A Strata node: topics split into partitions over the storage engine, the `strata.v1`
//! gRPC services, consumer groups, and an operator HTTP endpoint. [`Broker::start`] runs a
//! node in-process (tests and `strata dev` do); [`run`] runs one until a shutdown signal; the
//! `strata-broker` binary wraps `run` with flags, a TOML file and environment variables.
//!
//! ```no_run
//! # async fn demo() -> Result<(), strata_broker::Error> {
//! let config = strata_broker::Config { listen: "127.0.0.1:0".parse().unwrap(), http: None, ..Default::default() };
//! let broker = strata_broker::Broker::start(config).await?;
//! println!("serving on {}", broker.address());
//! broker.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`config`]: node settings, TOML, validation.
//! - `server`: start, serve, background tasks (retention, group expiry), shutdown.
//! - `node`: the state shared by services and tasks.
//! - [`topics`]: topic metadata on disk and the topic registry; [`partition`]: a partition's
//!   log, high watermark, append and read paths.
//! - [`agg`]: windowed aggregations folded as batches are applied.
//! - [`groups`]: consumer-group coordinator; `groups::membership` is the pure state machine,
//!   `groups::assign` the range assignor.
//! - `service`: the gRPC services; `service::status` maps errors to statuses.
//! - `http`: `/health` and `/metrics`; `metrics`: the Prometheus registry.
//! - `error`: [`Error`].
//! - [`process`]: logging, signals and error reporting shared by the binaries.
#![forbid(unsafe_code)]

pub mod agg;
pub mod cluster;
pub mod config;
mod error;
mod fsutil;
pub mod groups;
mod http;
mod metrics;
mod names;
mod node;
pub mod partition;
pub mod process;
pub mod raft;
pub mod search;
mod server;
mod service;
mod sync;
pub mod topics;

pub use config::{Config, Fsync};
pub use error::{Error, Result};
pub use node::Node;
pub use server::{Broker, run};
