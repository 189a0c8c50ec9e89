//! The `strata` subcommands.

pub mod agg;
pub mod bench;
pub mod cluster;
pub mod consume;
pub mod dev;
pub mod group;
pub mod produce;
pub mod search;
pub mod topic;

/// Connects to the brokers, with the address in the error.
pub(crate) async fn connect(brokers: &str) -> anyhow::Result<strata_client::Client> {
    use anyhow::Context;
    strata_client::Client::connect(brokers)
        .await
        .with_context(|| format!("cannot connect to {brokers} (is `strata dev` running?)"))
}
