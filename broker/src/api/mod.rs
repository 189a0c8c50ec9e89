//! The node's front doors. Each converts between its protocol and the domain (`topics`,
//! `replica`, `controller`, `groups`, `agg`, `search`) and nothing more: no rule of the
//! domain lives here, and every door answers the same errors in its own form.
//!
//! - [`grpc`]: the `strata.v1` client services (Produce, Fetch, Metadata, Admin, Groups,
//!   Aggregations, Search, Health), errors as statuses with an `ErrorDetail`, and the layer
//!   that times and counts every RPC;
//! - [`http`]: the operator endpoint, `/health` and `/metrics`.
//!
//! The peer (Raft) service is not a front door: it lives in `raft`.

pub mod grpc;
pub mod http;
