//! # strata-proto
//!
//! Strata's gRPC API (`strata.v1`): the `.proto` files under `proto/strata/v1/` and the
//! messages, clients and servers tonic and prost generate from them at build time (see
//! `build.rs`; no system `protoc` is involved). `bytes` fields are [`bytes::Bytes`], so a
//! record batch travels from the socket to the log and back without a per-record copy.
//!
//! # Layout
//! - [`v1`]: everything generated from the `strata.v1` package. Services (each with a
//!   `*_client` and `*_server` module): `Produce`, `Fetch` (server streaming, long poll),
//!   `Metadata`, `Admin`, `Groups`, `Health`. Errors: `ErrorCode` and `ErrorDetail`
//!   (`errors.proto`), carried in gRPC status details.
//! - [`transport`]: the buffered connections gRPC runs on under TLS, for servers and
//!   clients alike.
#![forbid(unsafe_code)]

pub mod transport;

/// The `strata.v1` package.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod v1 {
    tonic::include_proto!("strata.v1");
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prost::Message;

    use super::v1;

    #[test]
    fn batch_bytes_are_shared_not_copied() {
        let payload = Bytes::from(vec![7u8; 4096]);
        let encoded = v1::PartitionBatch {
            partition: 3,
            batch: payload.clone(),
        }
        .encode_to_vec();
        let wire = Bytes::from(encoded);
        let decoded = v1::PartitionBatch::decode(wire.clone()).expect("decodes");
        assert_eq!(decoded.batch, payload);
        // The decoded field points into the wire buffer: no copy was made.
        let start = wire.as_ptr() as usize;
        let at = decoded.batch.as_ptr() as usize;
        assert!(at >= start && at < start + wire.len());
    }

    #[test]
    fn services_are_generated() {
        let response = v1::HealthCheckResponse {
            status: v1::health_check_response::Status::Serving as i32,
            node_id: 3,
        };
        let round_trip =
            v1::HealthCheckResponse::decode(response.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(
            round_trip.status(),
            v1::health_check_response::Status::Serving
        );
        // The client and server types exist (a compile-time check).
        fn _client(_: Option<v1::health_client::HealthClient<tonic::transport::Channel>>) {}
        fn _server<T: v1::health_server::Health>(_: Option<v1::health_server::HealthServer<T>>) {}
    }
}
