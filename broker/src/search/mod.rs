//! Search: every partition replica indexes its committed events with tantivy, and a query is
//! run on the partitions' leaders and merged.
//!
//! - `schema`: the fields, and how a record becomes a document;
//! - `index`: a replica's index as the node sees it ([`PartitionIndex`]), held by the
//!   replica;
//! - `writer`: writing, committing and rebuilding an index;
//! - `feed`: the task that feeds a replica's index from its committed log;
//! - `query`: parsing what users type, and running it on one partition;
//! - `scatter`: [`scatter::Search`], a query over the cluster: scattered to the partitions' leaders,
//!   hits read from the logs, merged.
//!
//! `index`, `writer`, `schema` and `query` import nothing of the node's (the replicas hold
//! an index through them); `feed` and `scatter` run over the replicas and import `replica`
//! and `topics`. This module re-exports only the former.

pub mod feed;
pub mod index;
pub mod query;
pub mod scatter;
pub(crate) mod schema;
pub mod writer;

pub use index::{IndexCounters, PartitionIndex};
pub use query::{LocalHit, PartitionHits, SearchOrder, SearchSpec, parse};
pub use writer::index_batches;
