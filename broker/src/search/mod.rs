//! Search: every partition replica indexes its committed events with tantivy, and a query is
//! run on the partitions' leaders and merged.
//!
//! - `schema`: the fields, and how a record becomes a document;
//! - `index`: a replica's index and the task that feeds it from the log;
//! - `query`: parsing what users type, and running it on one partition.
//!
//! The gRPC side (scatter, gather, reading the hits' records from the logs) is in
//! `service::search`.

pub mod index;
pub mod query;
pub(crate) mod schema;

pub use index::{IndexCounters, PartitionIndex, index_batches};
pub use query::{LocalHit, PartitionHits, SearchOrder, SearchSpec, parse};

/// Checks a topic's list of fields to index.
pub fn validate_fields(fields: &[String]) -> Result<(), String> {
    for f in fields {
        if f.is_empty() || f.split('.').any(str::is_empty) || f.chars().any(char::is_whitespace) {
            return Err(format!(
                "search field `{f}` is not a JSON path (names separated by dots, e.g. http.status)"
            ));
        }
    }
    Ok(())
}
