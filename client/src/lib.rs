//! # strata-client
//!
//! The async Rust client for Strata.
//!
//! ```no_run
//! use strata_client::{Client, ProducerRecord, StartAt};
//! use tokio_stream::StreamExt;
//!
//! # async fn demo() -> strata_client::Result<()> {
//! let client = Client::connect("127.0.0.1:7001").await?;
//! client.admin().create_topic("sensors", strata_client::TopicSpec::partitions(8)).await?;
//!
//! let producer = client.producer().build();
//! let delivery = producer.send(ProducerRecord::new("sensors", r#"{"temp":21.5}"#).key("device-7")).await?;
//! let meta = delivery.await?; // durable on the broker
//! println!("partition {} offset {}", meta.partition, meta.offset);
//!
//! let mut consumer = client.consumer().group("dashboards").topic("sensors").start_at(StartAt::Earliest).build().await?;
//! while let Some(record) = consumer.next().await {
//!     let record = record?;
//!     println!("{}: {:?}", record.offset, record.value);
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`Client`] (`client`): bootstrap, metadata cache, one gRPC channel per broker.
//! - [`Producer`] (`producer`): batching by size and linger, key-hash partitioning
//!   ([`partitioner`]), acks, retries with back-off, a bounded in-flight memory budget.
//! - [`Consumer`] (`consumer`): consumer groups or manual assignment, start positions,
//!   auto or manual commits, an async `Stream` of [`ConsumerRecord`]s.
//! - [`Admin`] (`admin`): topics and groups; [`Access`] (`access`): users and ACL rules.
//!   TLS and a login are [`ClientConfig`]'s `tls` and `credentials`.
//! - [`Search`] (`search`): queries over the indexed events, hits, counts and histograms.
//! - [`Error`] (`error`): typed errors; broker errors carry the wire [`ErrorCode`].
#![forbid(unsafe_code)]

mod access;
mod admin;
mod aggregations;
mod client;
mod consumer;
mod error;
pub use strata_storage::partitioner;
mod producer;
mod record;
mod search;

pub use access::{Access, AclRule, WhoAmI, acl_rule};
pub use admin::{
    Admin, GroupDescription, GroupSummary, MemberInfo, NodeStatus, PartitionDescription,
    PartitionLag, ReplicaStatus, TopicDescription, TopicSpec,
};
pub use aggregations::{
    AggregationDescription, AggregationResult, AggregationRow, AggregationSpec, AggregationUpdate,
    Aggregations, PartitionAggregationStats,
};
pub use client::{Client, ClientConfig, ClientTls, Credentials};
pub use consumer::{Consumer, ConsumerBuilder, StartAt};
pub use error::{BrokerError, Error, Result};
pub use producer::{Acks, DeliveryFuture, Producer, ProducerBuilder};
pub use record::{ConsumerRecord, ProducerRecord, RecordMetadata};
pub use search::{HistogramBucket, Search, SearchHit, SearchOrder, SearchQuery, SearchResult};
pub use strata_proto::v1::ErrorCode;
