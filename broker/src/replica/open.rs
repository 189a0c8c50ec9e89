//! Opening a partition replica in its directory: the log, the state machine and the Raft
//! group (started, registered with the node's Raft service, initialized if new).

use std::path::Path;
use std::sync::{Arc, Mutex};

use strata_storage::LogConfig;
use tokio::sync::watch;

use super::Partition;
use super::machine::ReplicaMachine;
use super::producers::ProducerTable;
use super::watermark::HighWatermark;
use crate::agg::PartitionAggs;
use crate::controller::{ClusterState, SearchSettings};
use crate::error::Result;
use crate::raft::{Group, RaftEnv, open_log, partition_group};
use crate::search::PartitionIndex;

/// How this node keeps its replicas.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    /// The logs' settings.
    pub log: LogConfig,
    /// How long (ms of a partition's record clock) an idle idempotent producer is remembered.
    pub producer_expiry_ms: u64,
}

/// Which partition a replica is of.
#[derive(Debug, Clone)]
pub struct ReplicaOf {
    /// The topic's name.
    pub topic: Arc<str>,
    /// The topic's id in the cluster.
    pub topic_id: u32,
    /// The partition.
    pub partition: u32,
    /// Its replicas; the first is the preferred leader.
    pub replicas: Vec<u64>,
}

impl Partition {
    /// Opens (or creates) this node's replica of `of` in `dir` and starts its Raft group.
    /// The search index, when `search` enables it, is only opened: its indexer is started
    /// by whoever registers the replica.
    ///
    /// `durable_below`, when reopening a replica whose log failed a flush, is the index
    /// before which its entries were known durable: see [`open_log`].
    pub async fn open(
        env: &RaftEnv,
        dir: &Path,
        of: ReplicaOf,
        settings: &ReplicaSettings,
        search: &SearchSettings,
        cluster: watch::Receiver<Arc<ClusterState>>,
        durable_below: Option<u64>,
    ) -> Result<Partition> {
        let ReplicaOf {
            topic,
            topic_id,
            partition: id,
            replicas,
        } = of;
        let log = open_log(dir, settings.log.clone(), &topic, id, durable_below).await?;
        let high_watermark = HighWatermark::default();
        let producers = Arc::new(Mutex::new(ProducerTable::new(settings.producer_expiry_ms)));
        let aggs = Arc::new(Mutex::new(PartitionAggs::default()));
        let machine = ReplicaMachine {
            producers: producers.clone(),
            aggs: aggs.clone(),
            high_watermark: high_watermark.clone(),
            log: log.clone(),
            to_fold: Vec::new(),
        };
        let restarted = {
            let high_watermark = high_watermark.clone();
            Arc::new(move |next_offset| high_watermark.publish(next_offset))
        };
        let group = Group::start(
            env,
            partition_group(topic_id, id),
            &format!("{topic}/{id}"),
            log.clone(),
            Box::new(machine),
            Some(restarted),
            &replicas,
        )
        .await?;
        Ok(Partition {
            search: search
                .enabled
                .then(|| Arc::new(PartitionIndex::new(dir, &search.fields))),
            topic,
            id,
            node_id: env.node_id,
            replicas,
            log,
            group,
            producers,
            aggs,
            high_watermark,
            cluster,
            closed: watch::channel(false).0,
        })
    }
}
