//! Searching events: every event of an indexed topic is searchable shortly after it is
//! acknowledged.
//!
//! ```no_run
//! # async fn demo(client: strata_client::Client) -> strata_client::Result<()> {
//! use strata_client::{SearchOrder, SearchQuery};
//! let result = client
//!     .search()
//!     .run(SearchQuery::new("status:alarm AND temperature:[30 TO *]").topic("sensors").limit(10))
//!     .await?;
//! println!("{} matching events", result.total);
//! for hit in result.hits {
//!     println!("{}/{}@{} {:?}", hit.topic, hit.partition, hit.offset, hit.value);
//! }
//! # Ok(()) }
//! ```

use strata_proto::v1;

use crate::client::Client;
use crate::error::{Result, from_status};

pub use strata_proto::v1::{
    HistogramBucket, SearchHit, SearchOrder, SearchResponse as SearchResult,
};

/// A search: the query (tantivy syntax, value fields named as they are) and its options.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    request: v1::SearchRequest,
}

impl SearchQuery {
    /// A search for `query` over every indexed topic, newest first, 20 hits.
    pub fn new(query: impl Into<String>) -> Self {
        SearchQuery {
            request: v1::SearchRequest {
                query: query.into(),
                ..Default::default()
            },
        }
    }

    /// Searches this topic (call again for more); without it every indexed topic.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.request.topics.push(topic.into());
        self
    }

    /// Only events at or after this time (ms since the epoch).
    pub fn from_ms(mut self, ms: i64) -> Self {
        self.request.from_ms = Some(ms);
        self
    }

    /// Only events before this time (ms since the epoch).
    pub fn to_ms(mut self, ms: i64) -> Self {
        self.request.to_ms = Some(ms);
        self
    }

    /// Most hits returned (the server allows up to 10,000).
    pub fn limit(mut self, limit: u32) -> Self {
        self.request.limit = limit;
        self
    }

    /// Order of the hits.
    pub fn order(mut self, order: SearchOrder) -> Self {
        self.request.order = order as i32;
        self
    }

    /// Only count (no hits are returned).
    pub fn count_only(mut self) -> Self {
        self.request.count_only = true;
        self
    }

    /// Adds a histogram of the matching events over time, in buckets this wide (ms).
    pub fn histogram_ms(mut self, ms: u64) -> Self {
        self.request.histogram_ms = ms;
        self
    }
}

/// The search API of a cluster (from [`Client::search`]).
#[derive(Clone)]
pub struct Search {
    client: Client,
}

impl Search {
    pub(crate) fn new(client: Client) -> Self {
        Search { client }
    }

    /// Runs a search. A malformed query is refused with `INVALID_ARGUMENT` and a message
    /// that says what is wrong.
    pub async fn run(&self, query: SearchQuery) -> Result<SearchResult> {
        let mut rpc = v1::search_client::SearchClient::new(self.client.any_channel()?);
        let response = rpc.search(query.request).await.map_err(from_status)?;
        Ok(response.into_inner())
    }
}
