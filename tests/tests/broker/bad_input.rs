//! t20–t29: bad input gets a clear error and the broker keeps serving.

use strata_client::{ErrorCode, ProducerRecord, StartAt, TopicSpec};
use strata_proto::v1;
use strata_tests::{TestBroker, next_record, reader};

fn detail(status: &tonic::Status) -> v1::ErrorDetail {
    prost::Message::decode(status.details()).expect("statuses carry an ErrorDetail")
}

fn batch_bytes(values: &[&[u8]]) -> Vec<u8> {
    let mut b = strata_storage::BatchBuilder::new();
    for v in values {
        b.push(strata_storage::NewRecord::value(1, v)).unwrap();
    }
    b.finish().unwrap().as_bytes().to_vec()
}

/// t20: bad requests get the documented status and error code, store nothing, and the
/// broker keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_bad_input_gets_clear_errors_and_the_broker_keeps_serving() {
    let broker = TestBroker::start().await;
    let client = broker.client_with_topic("good", 2).await;
    let url = format!("http://{}", broker.address());
    let mut produce = v1::produce_client::ProduceClient::connect(url.clone())
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);
    let request = |topic: &str, partition: u32, batch: Vec<u8>| v1::ProduceRequest {
        topic: topic.to_string(),
        batches: vec![v1::PartitionBatch {
            partition,
            batch: batch.into(),
        }],
        acks: v1::Acks::All as i32,
        timeout_ms: 0,
    };

    // Unknown topic: NOT_FOUND / UNKNOWN_TOPIC.
    let status = produce
        .produce(request("nope", 0, batch_bytes(&[b"x"])))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), detail(&status).code()),
        (tonic::Code::NotFound, v1::ErrorCode::UnknownTopic)
    );

    // A batch with a wrong CRC: INVALID_BATCH for that batch.
    let mut corrupt = batch_bytes(&[b"hello", b"world"]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let response = produce
        .produce(request("good", 0, corrupt))
        .await
        .unwrap()
        .into_inner();
    let error = response.results[0]
        .error
        .clone()
        .expect("the batch is refused");
    assert_eq!(error.code(), v1::ErrorCode::InvalidBatch);
    assert!(error.message.contains("CRC"), "{}", error.message);

    // Garbage that is not a batch at all, and a truncated batch.
    let response = produce
        .produce(request("good", 0, b"not a batch".to_vec()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.results[0].error.clone().unwrap().code(),
        v1::ErrorCode::InvalidBatch
    );
    let mut truncated = batch_bytes(&[b"abc"]);
    truncated.truncate(truncated.len() - 2);
    let response = produce
        .produce(request("good", 0, truncated))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.results[0].error.clone().unwrap().code(),
        v1::ErrorCode::InvalidBatch
    );

    // A batch over max_batch_bytes (1 MiB here): BATCH_TOO_LARGE.
    let big = vec![7u8; 1_100_000];
    let response = produce
        .produce(request("good", 0, batch_bytes(&[&big])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.results[0].error.clone().unwrap().code(),
        v1::ErrorCode::BatchTooLarge
    );

    // An unknown partition.
    let response = produce
        .produce(request("good", 9, batch_bytes(&[b"x"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.results[0].error.clone().unwrap().code(),
        v1::ErrorCode::UnknownPartition
    );

    // Invalid topic names: INVALID_ARGUMENT.
    for name in ["", "has space", ".hidden", "slash/es"] {
        let err = client
            .admin()
            .create_topic(name, TopicSpec::partitions(1))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(ErrorCode::InvalidArgument),
            "{name:?}: {err}"
        );
    }
    let err = client
        .admin()
        .create_topic("zero", TopicSpec::partitions(0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));
    let err = client
        .admin()
        .create_topic("good", TopicSpec::partitions(1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TopicExists));
    let err = client
        .admin()
        .create_topic(
            "replicated",
            TopicSpec {
                partitions: 1,
                replication_factor: 3,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::InvalidArgument),
        "one node cannot hold three replicas"
    );

    // An offset past the end: OUT_OF_RANGE / OFFSET_OUT_OF_RANGE.
    let mut fetch = v1::fetch_client::FetchClient::connect(url).await.unwrap();
    let status = fetch
        .fetch(v1::FetchRequest {
            topic: "good".into(),
            partitions: vec![v1::PartitionPosition {
                partition: 0,
                offset: 1_000,
            }],
            max_bytes: 0,
            max_wait_ms: 0,
            follow: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), detail(&status).code()),
        (tonic::Code::OutOfRange, v1::ErrorCode::OffsetOutOfRange)
    );

    // Nothing bad was stored, and the broker still serves good requests.
    let producer = client.producer().build();
    let meta = producer
        .send_and_wait(ProducerRecord::new("good", "fine").partition(0))
        .await
        .unwrap();
    assert_eq!(meta.offset, 0, "refused batches took no offsets");
    let mut consumer = reader(&client, "good", [0], StartAt::Earliest).await;
    let r = next_record(&mut consumer).await;
    assert_eq!(r.value.as_deref(), Some(&b"fine"[..]));
    // The client reports an unknown topic as such.
    let err = producer
        .send(ProducerRecord::new("missing", "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopic));
}
