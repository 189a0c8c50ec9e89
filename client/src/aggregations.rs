//! Windowed aggregations: define, drop, list, describe, query and watch.
//!
//! ```no_run
//! # async fn demo(client: strata_client::Client) -> strata_client::Result<()> {
//! use strata_client::AggregationSpec;
//! let aggs = client.aggregations();
//! aggs.create(AggregationSpec {
//!     name: "temp-1m".into(),
//!     topic: "sensors".into(),
//!     window: "tumbling:1m".into(),
//!     time_field: "ts".into(),
//!     group_by: vec!["device".into()],
//!     measures: vec!["count".into(), "avg(temperature)".into(), "p99(temperature)".into()],
//!     ..Default::default()
//! })
//! .await?;
//! let result = aggs.query("temp-1m", Some(0), None, &[("device", "d1")]).await?;
//! for row in result.rows {
//!     println!("{} {:?} {:?}", row.start_ms, row.group, row.values);
//! }
//! # Ok(()) }
//! ```

use crate::client::Transport;
use strata_proto::v1;
use tokio_stream::StreamExt;

use crate::client::Client;
use crate::error::{Result, from_status};

pub use strata_proto::v1::{
    AggregationRow, AggregationSpec, DescribeAggregationResponse as AggregationDescription,
    PartitionAggregationStats, QueryAggregationResponse as AggregationResult,
    WatchAggregationResponse as AggregationUpdate,
};

/// The aggregation API of a cluster (from [`Client::aggregations`]).
#[derive(Clone)]
pub struct Aggregations {
    client: Client,
}

impl Aggregations {
    pub(crate) fn new(client: Client) -> Self {
        Aggregations { client }
    }

    fn rpc(&self) -> Result<v1::aggregations_client::AggregationsClient<Transport>> {
        Ok(v1::aggregations_client::AggregationsClient::new(
            self.client.any_channel()?,
        ))
    }

    /// Defines an aggregation; returns its id. A bad definition is refused with
    /// `INVALID_ARGUMENT` and a message saying what is wrong.
    pub async fn create(&self, spec: AggregationSpec) -> Result<u64> {
        let response = self
            .rpc()?
            .create(v1::CreateAggregationRequest { spec: Some(spec) })
            .await
            .map_err(from_status)?;
        Ok(response.into_inner().id)
    }

    /// Drops an aggregation (its state leaves every partition).
    pub async fn drop(&self, name: &str) -> Result<()> {
        self.rpc()?
            .drop(v1::DropAggregationRequest {
                name: name.to_string(),
            })
            .await
            .map_err(from_status)?;
        Ok(())
    }

    /// Every aggregation.
    pub async fn list(&self) -> Result<Vec<AggregationSpec>> {
        let response = self
            .rpc()?
            .list(v1::ListAggregationsRequest {})
            .await
            .map_err(from_status)?;
        Ok(response.into_inner().aggregations)
    }

    /// Its definition and each partition's watermark and counters.
    pub async fn describe(&self, name: &str) -> Result<AggregationDescription> {
        let response = self
            .rpc()?
            .describe(v1::DescribeAggregationRequest {
                name: name.to_string(),
            })
            .await
            .map_err(from_status)?;
        Ok(response.into_inner())
    }

    /// Windows ending after `from_ms` and starting before `to_ms` whose group-by parts have
    /// the given values, merged over the partitions.
    pub async fn query(
        &self,
        name: &str,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
        r#where: &[(&str, &str)],
    ) -> Result<AggregationResult> {
        let response = self
            .rpc()?
            .query(v1::QueryAggregationRequest {
                name: name.to_string(),
                from_ms,
                to_ms,
                r#where: r#where
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            })
            .await
            .map_err(from_status)?;
        Ok(response.into_inner())
    }

    /// Follows the windows: first every selected window, then each one that changes.
    pub async fn watch(
        &self,
        name: &str,
        from_ms: Option<i64>,
        r#where: &[(&str, &str)],
    ) -> Result<impl futures_core::Stream<Item = Result<AggregationUpdate>> + use<>> {
        let response = self
            .rpc()?
            .watch(v1::WatchAggregationRequest {
                name: name.to_string(),
                from_ms,
                r#where: r#where
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
            .await
            .map_err(from_status)?;
        Ok(response.into_inner().map(|r| r.map_err(from_status)))
    }
}
