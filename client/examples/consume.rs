//! Consumes the `readings` topic (see the `produce` example) as a member of a group,
//! printing each record; stops after 10 s without new records. Committed offsets make a
//! second run continue where the first stopped.
//!
//! ```sh
//! cargo run -p strata-client --example consume
//! ```

// An example prints what it does.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use strata_client::{Client, StartAt};
use tokio_stream::StreamExt;

#[tokio::main]
async fn main() -> strata_client::Result<()> {
    let brokers = std::env::var("STRATA_BROKERS").unwrap_or_else(|_| "127.0.0.1:7001".to_string());
    let client = Client::connect(&brokers).await?;
    let mut consumer = client
        .consumer()
        .group("example")
        .topic("readings")
        .start_at(StartAt::Earliest)
        .build()
        .await?;
    while let Ok(Some(record)) =
        tokio::time::timeout(Duration::from_secs(10), consumer.next()).await
    {
        let record = record?;
        let value = record
            .value
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        println!(
            "{}/{} @{}: {value}",
            record.topic, record.partition, record.offset
        );
    }
    consumer.close().await // commits what was read, leaves the group
}
