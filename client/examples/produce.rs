//! Produces JSON sensor readings, keyed by device, and prints where each landed.
//!
//! ```sh
//! strata dev                                   # in one terminal
//! cargo run -p strata-client --example produce # in another (STRATA_BROKERS to point elsewhere)
//! ```

// An example prints what it does.
#![allow(clippy::print_stdout)]

use strata_client::{Client, ErrorCode, ProducerRecord, TopicSpec};

#[tokio::main]
async fn main() -> strata_client::Result<()> {
    let brokers = std::env::var("STRATA_BROKERS").unwrap_or_else(|_| "127.0.0.1:7001".to_string());
    let client = Client::connect(&brokers).await?;
    match client
        .admin()
        .create_topic("readings", TopicSpec::partitions(4))
        .await
    {
        Ok(_) => println!("created topic `readings`"),
        Err(e) if e.code() == Some(ErrorCode::TopicExists) => {}
        Err(e) => return Err(e),
    }
    let producer = client.producer().build();
    let mut deliveries = Vec::new();
    for i in 0..12 {
        let device = format!("device-{}", i % 6);
        let value = format!(
            r#"{{"device":"{device}","temperature":{:.1}}}"#,
            20.0 + i as f64 / 2.0
        );
        // `send` queues the record; the returned future resolves once it is stored.
        deliveries.push(
            producer
                .send(ProducerRecord::new("readings", value).key(device))
                .await?,
        );
    }
    for delivery in deliveries {
        let meta = delivery.await?;
        println!(
            "stored at partition {} offset {}",
            meta.partition, meta.offset
        );
    }
    producer.close().await
}
