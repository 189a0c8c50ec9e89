//! t20–t29: bad input gets a clear error and the broker keeps serving.

use futures_util::StreamExt;
use strata_client::{ErrorCode, ProducerRecord, StartAt, TopicSpec};
use strata_proto::v1;
use strata_tests::{TestBroker, error_detail, eventually, next_record, reader};

use super::WAIT;

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
        (status.code(), error_detail(&status).code()),
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
        (status.code(), error_detail(&status).code()),
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

/// t21: Raft messages that no peer could send are refused before they reach a group: a
/// vote, pre-vote or append carrying a term that would overflow (openraft panicked on one
/// and stored the vote, so the node stayed dead), and a message larger than the limit; a
/// controller command sent straight to the controller is checked when applied, so a name
/// that is a path is refused and creates nothing. The node keeps serving, also after a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t21_forged_raft_messages_are_refused_and_the_node_keeps_serving() {
    let mut broker = TestBroker::start_with(|c| c.max_request_bytes = 4 << 20).await;
    let client = broker.client_with_topic("before", 1).await;
    // (A single node on loopback: its peer listener is plain, every caller a trusted peer.)
    let mut raft =
        v1::raft_client::RaftClient::connect(format!("http://{}", broker.peer_address()))
            .await
            .unwrap()
            .max_encoding_message_size(usize::MAX);
    let huge_vote = serde_json::json!({
        "vote": {"leader_id": {"term": u64::MAX, "node_id": 9}, "committed": false},
        "last_log_id": null,
    });
    let message = |body: &serde_json::Value| v1::RaftMessage {
        group_id: 0,
        body: serde_json::to_vec(body).unwrap().into(),
    };
    let refused = |status: tonic::Status| {
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("term"), "{status:?}");
    };
    refused(raft.vote(message(&huge_vote)).await.unwrap_err());
    refused(raft.pre_vote(message(&huge_vote)).await.unwrap_err());
    let append = v1::RaftAppendRequest {
        group_id: 0,
        vote_term: u64::MAX,
        vote_node: 9,
        vote_committed: true,
        prev_log_id: None,
        leader_commit: None,
        entries: Vec::new(),
    };
    refused(raft.append(append.clone()).await.unwrap_err());
    // Larger than the node's request limit: refused before it is decoded.
    let oversized = v1::RaftAppendRequest {
        vote_term: 1,
        entries: vec![v1::RaftEntry {
            log_id: None,
            kind: 1,
            body: vec![0u8; 5 << 20].into(),
        }],
        ..append
    };
    let status = raft.append(oversized).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");

    // A command that skipped the Admin service's checks is refused when applied.
    let create = serde_json::json!({
        "op": "create_topic",
        "name": "../../outside",
        "config": {"partitions": 1, "replication_factor": 0, "retention_ms": null, "retention_bytes": null},
    });
    let reply = raft.propose(message(&create)).await.unwrap().into_inner();
    let answer: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(answer["Ok"]["result"], "invalid", "{answer}");
    let outside = broker.data_dir().parent().unwrap();
    assert!(
        std::fs::read_dir(outside).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("outside")),
        "a directory was created outside the data directory"
    );
    let topics = strata_tests::topic_names(&client).await;
    assert_eq!(topics, ["before"]);

    // The node keeps serving: its groups elect leaders, also after a restart.
    client
        .admin()
        .create_topic("after", TopicSpec::partitions(1))
        .await
        .unwrap();
    broker.restart().await;
    let client = broker.client().await;
    let producer = client.producer().build();
    for topic in ["before", "after"] {
        producer
            .send_and_wait(ProducerRecord::new(topic, "still serving"))
            .await
            .unwrap();
    }
}

/// t22: a record timestamp more than the allowed time ahead of the broker's clock (an hour
/// by default) is refused with a message saying so, and stores nothing: one of `i64::MAX`
/// would pin the log's max timestamp (and so retention by time) and the watermark of every
/// aggregation on record time for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t22_timestamps_far_ahead_of_the_broker_clock_are_refused() {
    let broker = TestBroker::start().await;
    let client = broker.client_with_topic("clock", 1).await;
    let mut produce =
        v1::produce_client::ProduceClient::connect(format!("http://{}", broker.address()))
            .await
            .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let batch_at = |ts: i64| {
        let mut b = strata_storage::BatchBuilder::new();
        b.push(strata_storage::NewRecord::value(ts, b"v")).unwrap();
        b.finish().unwrap().into_bytes()
    };
    for (ts, accepted) in [
        (i64::MAX, false),
        (now + 2 * 3_600_000, false),
        (now + 60_000, true),
        (0, true),
    ] {
        let response = produce
            .produce(v1::ProduceRequest {
                topic: "clock".into(),
                batches: vec![v1::PartitionBatch {
                    partition: 0,
                    batch: batch_at(ts),
                }],
                acks: v1::Acks::All as i32,
                timeout_ms: 0,
            })
            .await
            .unwrap()
            .into_inner();
        match &response.results[0].error {
            None => assert!(accepted, "timestamp {ts} was stored"),
            Some(e) => {
                assert!(!accepted, "timestamp {ts} refused: {e:?}");
                assert_eq!(e.code(), v1::ErrorCode::InvalidArgument);
                assert!(e.message.contains("ahead of the broker's clock"), "{e:?}");
            }
        }
    }
    let t = client.admin().describe_topic("clock").await.unwrap();
    assert_eq!(
        t.partitions[0].high_watermark, 2,
        "only the two good batches were stored"
    );
}

/// t23: a search built to amplify work is bounded: naming partitions is for other nodes
/// only (refused on the client port), a partition or topic named 20,000 times is searched
/// once, and an answer carries at most the node's request limit of record bytes
/// (the best hits that fit; its total still counts every match).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t23_searches_built_to_amplify_work_are_bounded() {
    let broker = TestBroker::start_with(|c| c.max_request_bytes = 1 << 20).await;
    let client = broker.client_with_topic("big", 1).await;
    let producer = client.producer().build();
    let value = format!(r#"{{"word":"needle","pad":"{}"}}"#, "x".repeat(100_000));
    for _ in 0..30 {
        producer
            .send_and_wait(ProducerRecord::new("big", value.clone()).partition(0))
            .await
            .unwrap();
    }
    let connect = |address: String| async move {
        v1::search_client::SearchClient::connect(format!("http://{address}"))
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20)
    };
    // Only another node names partitions (a share of its search): on the peer listener.
    let mut search = connect(broker.address()).await;
    let mut peer_search = connect(broker.peer_address()).await;
    let request = |topics: Vec<String>, partitions: Vec<v1::SearchPartition>| v1::SearchRequest {
        query: "needle".into(),
        limit: 30,
        topics,
        partitions,
        ..Default::default()
    };
    let share = vec![
        v1::SearchPartition {
            topic: "big".into(),
            partition: 0,
        };
        20_000
    ];
    let refused = search
        .search(request(Vec::new(), share[..1].to_vec()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let answer = eventually(WAIT, "every record to be searchable", async || {
        let r = peer_search
            .search(request(Vec::new(), share.clone()))
            .await
            .unwrap()
            .into_inner();
        (r.total == 30).then_some(r)
    })
    .await;
    assert_eq!(answer.partitions, 1, "the partition was searched once");
    let bytes: usize = answer
        .hits
        .iter()
        .map(|h| h.value.as_ref().map_or(0, |v| v.len()))
        .sum();
    assert!(bytes <= 1 << 20, "{bytes} bytes of hits");
    assert!(
        !answer.hits.is_empty() && answer.hits.len() < 30,
        "{} hits",
        answer.hits.len()
    );
    let answer = search
        .search(request(vec!["big".into(); 20_000], Vec::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((answer.partitions, answer.total), (1, 30));
}

/// t24: a topic that would take a node past its partition limit, or the cluster past its
/// topic limit, is refused before anything is allocated (a 5,000-partition topic grew a
/// node to 4.9 GB before failing), so is an aggregation beyond the per-topic limit, and the
/// node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t24_topics_beyond_the_limits_are_refused_before_anything_is_allocated() {
    let broker = TestBroker::start_with(|c| {
        c.max_partitions_per_node = 10;
        c.max_topics = 2;
        c.max_aggregations_per_topic = 2;
    })
    .await;
    let client = broker.client_with_topic("first", 8).await;
    let admin = client.admin();
    let e = admin
        .create_topic("toomany", TopicSpec::partitions(5000))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::LimitExceeded), "{e}");
    assert!(e.to_string().contains("max_partitions_per_node"), "{e}");
    let e = admin
        .create_topic("toomany", TopicSpec::partitions(3))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::LimitExceeded), "{e}");
    admin
        .create_topic("second", TopicSpec::partitions(2))
        .await
        .unwrap();
    let e = admin
        .create_topic("third", TopicSpec::partitions(1))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("max_topics"), "{e}");
    let names: Vec<String> = admin
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["first", "second"]);
    let topics_dir = broker.data_dir().join("topics");
    assert_eq!(
        std::fs::read_dir(topics_dir).unwrap().count(),
        2,
        "nothing was allocated"
    );
    let spec = |name: &str| strata_client::AggregationSpec {
        name: name.into(),
        topic: "first".into(),
        window: "tumbling:1m".into(),
        measures: vec!["count".into()],
        ..Default::default()
    };
    for name in ["a1", "a2"] {
        client.aggregations().create(spec(name)).await.unwrap();
    }
    let e = client.aggregations().create(spec("a3")).await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(strata_client::ErrorCode::LimitExceeded),
        "{e}"
    );
    assert!(e.to_string().contains("max_aggregations_per_topic"), "{e}");
    assert_eq!(client.aggregations().list().await.unwrap().len(), 2);
    client
        .producer()
        .build()
        .send_and_wait(ProducerRecord::new("first", "still serving"))
        .await
        .unwrap();
}

/// t25: the request bytes held by all client calls of a node are bounded
/// (`max_in_flight_request_bytes`): two calls that send most of their request and never
/// finish it hold 1.8 MiB of a 2 MiB budget; a 0.5 MiB request is then refused `UNAVAILABLE`
/// (retriable), small calls are still served, and once the stuck calls end the large
/// request is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t25_request_bytes_in_flight_are_bounded_node_wide() {
    let broker = TestBroker::start_with(|c| {
        c.max_request_bytes = 1 << 20;
        c.max_in_flight_request_bytes = 2 << 20;
        c.http = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let client = broker.client_with_topic("bounded", 1).await;
    let url = format!("http://{}", broker.address());
    let request = |bytes: usize| v1::ProduceRequest {
        topic: "bounded".into(),
        batches: vec![v1::PartitionBatch {
            partition: 0,
            batch: vec![0u8; bytes].into(),
        }],
        ..Default::default()
    };
    // A call whose request stream sends one message and then neither ends nor sends more
    // until it is told to: the node has the message's bytes and waits for the rest of the
    // call. (Ended by a signal rather than by aborting the task: dropping a call's future
    // need not reset its HTTP/2 stream while the body is still being sent.)
    let mut stuck = Vec::new();
    let mut release = Vec::new();
    for _ in 0..2 {
        let (end, ended) = tokio::sync::oneshot::channel::<()>();
        release.push(end);
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let message = request(900 << 10);
        stuck.push(tokio::spawn(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.unwrap();
            let body = futures_util::stream::once(async move { message }).chain(
                futures_util::stream::once(ended)
                    .filter_map(|_| std::future::ready(None::<v1::ProduceRequest>)),
            );
            let codec =
                tonic_prost::ProstCodec::<v1::ProduceRequest, v1::ProduceResponse>::default();
            let path =
                tonic::codegen::http::uri::PathAndQuery::from_static("/strata.v1.Produce/Produce");
            grpc.client_streaming(tonic::Request::new(body), path, codec)
                .await
        }));
    }
    // Both stuck calls hold their bytes before anything else is sent (a large request sent
    // while a stuck call is still arriving could take that call's place in the budget).
    let http = broker.http_address().unwrap();
    let held = async || -> u64 {
        let (_, metrics) = super::http_get(http, "/metrics").await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("strata_in_flight_request_bytes "))
            .expect("the gauge is exported")
            .parse()
            .unwrap()
    };
    eventually(WAIT, "the stuck calls to hold their bytes", async || {
        (held().await >= 1_800 << 10).then_some(())
    })
    .await;
    let mut produce = v1::produce_client::ProduceClient::connect(url)
        .await
        .unwrap();
    let refused = eventually(
        WAIT,
        "a large request to be refused",
        async || match produce.produce(request(512 << 10)).await {
            Err(s) if s.code() == tonic::Code::Unavailable => Some(s),
            _ => None,
        },
    )
    .await;
    assert!(
        refused.message().contains("max_in_flight_request_bytes"),
        "{refused:?}"
    );
    assert_eq!(error_detail(&refused).code(), v1::ErrorCode::Unavailable);
    let held = held().await;
    assert!((1_800 << 10..=2 << 20).contains(&held), "{held} bytes held");
    // Small calls are still served.
    let producer = client.producer().build();
    producer
        .send_and_wait(ProducerRecord::new("bounded", "small").partition(0))
        .await
        .unwrap();
    assert_eq!(
        client
            .admin()
            .describe_topic("bounded")
            .await
            .unwrap()
            .partitions[0]
            .high_watermark,
        1
    );
    // The stuck calls end (each answered for its zero-filled batch): their bytes come back
    // and the large request is taken (and refused for what it is, not for its size).
    for end in release {
        end.send(()).unwrap();
    }
    for task in stuck {
        let answer = tokio::time::timeout(WAIT, task)
            .await
            .expect("a stuck call to be answered once its request ends")
            .unwrap()
            .expect("the call to be answered");
        assert_eq!(
            answer.into_inner().results[0]
                .error
                .as_ref()
                .map(|e| e.code()),
            Some(v1::ErrorCode::InvalidBatch)
        );
    }
    let answer = eventually(
        WAIT,
        "the large request to be admitted",
        async || match produce.produce(request(512 << 10)).await {
            Err(s) if s.code() == tonic::Code::Unavailable => None,
            other => Some(other),
        },
    )
    .await;
    let result = answer.unwrap().into_inner().results.remove(0);
    assert_eq!(
        result.error.map(|e| e.code()),
        Some(v1::ErrorCode::InvalidBatch)
    );
}
