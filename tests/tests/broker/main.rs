//! A single broker over real gRPC on loopback, driven by the real client.
//!
//! Numbered cases: t01–t09 produce and consume (`produce`), t10–t19 consumer groups and
//! restarts (`groups`), t20–t29 bad input (`bad_input`), t30–t39 the client listener's
//! security (`security`).

#![allow(clippy::unwrap_used)]

mod bad_input;
mod groups;
mod produce;
mod security;

use std::time::Duration;

/// How long a test waits for a condition.
const WAIT: Duration = Duration::from_secs(30);

/// `GET path` over plain HTTP/1.0: the status line and the body.
async fn http_get(address: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: strata\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// Produces `per_partition` records tagged `tag` to each of `partitions` partitions and
/// waits for every acknowledgement.
pub(crate) async fn produce_to_each(
    producer: &strata_client::Producer,
    topic: &str,
    partitions: u32,
    per_partition: u32,
    tag: &str,
) {
    let mut pending = Vec::new();
    for p in 0..partitions {
        for i in 0..per_partition {
            pending.push(
                producer
                    .send(
                        strata_client::ProducerRecord::new(topic, format!("{tag}-{p}-{i}"))
                            .partition(p),
                    )
                    .await
                    .unwrap(),
            );
        }
    }
    for d in pending {
        d.await.unwrap();
    }
}
