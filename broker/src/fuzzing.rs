//! Entry points for the fuzz targets under `fuzz/` (and the replay of their corpora in
//! `cargo test`): each takes arbitrary bytes, must not panic on any of them, and asserts
//! what holds for every input. The Raft wire mapping's are in `raft::fuzz`, the storage
//! engine's in `strata_storage::fuzz`. Not an API.

use std::borrow::Cow;

use crate::agg::filter::Expr;
use crate::agg::json::{Path, Scalar, extract};
use crate::controller::{ClusterState, Command};
use crate::raft::Position;

/// The aggregation JSON extractor against serde_json on the same document: for every
/// document serde_json reads as an object, the extractor reads it too and finds the same
/// values (strings, numbers as f64, booleans, null; objects and arrays as nested) at the
/// same paths — its top-level keys, their children, and a few fixed paths. On anything
/// else it must only not panic.
pub fn agg_json(data: &[u8]) {
    let fixed = ["a", "a.b", "t", "device", "value", "x.y.z"];
    let mut names: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
    let parsed: Option<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(data).ok();
    if let Some(doc) = &parsed {
        for (k, v) in doc.iter().take(8) {
            names.push(k.clone());
            if let serde_json::Value::Object(inner) = v {
                names.extend(inner.keys().take(4).map(|k2| format!("{k}.{k2}")));
            }
        }
    }
    let named: Vec<(String, Path)> = names
        .into_iter()
        // (A path is trimmed: a key with spaces around it cannot be named.)
        .filter(|n| n.trim() == n)
        .filter_map(|n| Path::parse(&n).ok().map(|p| (n, p)))
        .collect();
    let paths: Vec<Path> = named.iter().map(|(_, p)| p.clone()).collect();
    let mut out = Vec::new();
    let object = extract(data, &paths, &mut out);
    let Some(doc) = parsed else {
        return;
    };
    assert!(object, "serde_json reads an object, the extractor does not");
    let text = String::from_utf8_lossy(data);
    let root = serde_json::Value::Object(doc);
    for ((name, _), got) in named.iter().zip(&out) {
        // Duplicate keys: serde_json keeps the last, JSON leaves it open; not compared.
        let keys: Vec<&str> = name.split('.').collect();
        if keys
            .iter()
            .any(|k| text.matches(&format!("\"{k}\"")).count() > 1)
        {
            continue;
        }
        let mut at = Some(&root);
        for k in &keys {
            at = at.and_then(|v| v.as_object()).and_then(|o| o.get(*k));
        }
        let expected = at.map(|v| match v {
            serde_json::Value::Null => Scalar::Null,
            serde_json::Value::Bool(b) => Scalar::Bool(*b),
            serde_json::Value::Number(n) => Scalar::Num(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => Scalar::Str(Cow::Owned(s.clone())),
            _ => Scalar::Nested,
        });
        match (&expected, got) {
            (Some(Scalar::Num(a)), Some(Scalar::Num(b))) => {
                assert!(
                    a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= a.abs() * 1e-15,
                    "`{name}`: serde_json {a}, extractor {b}"
                )
            }
            _ => assert_eq!(&expected, got, "`{name}`"),
        }
    }
}

/// The aggregation filter parser: anything it accepts evaluates, without a panic, over
/// fields that are missing or of every type.
pub fn agg_filter(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((expr, fields)) = Expr::parse_with_fields(src) else {
        return;
    };
    let values = [
        None,
        Some(Scalar::Num(0.0)),
        Some(Scalar::Num(-1.5e300)),
        Some(Scalar::Num(f64::NAN)),
        Some(Scalar::Str(Cow::Borrowed("alarm"))),
        Some(Scalar::Bool(true)),
        Some(Scalar::Null),
        Some(Scalar::Nested),
    ];
    for v in &values {
        let row = vec![v.clone(); fields.len()];
        std::hint::black_box(expr.eval(&row));
    }
    let mixed: Vec<_> = (0..fields.len())
        .map(|i| values[i % values.len()].clone())
        .collect();
    std::hint::black_box(expr.eval(&mixed));
}

/// The search query parser and rewriter: never a panic, whatever the query.
pub fn search_query(data: &[u8]) {
    if let Ok(query) = std::str::from_utf8(data) {
        let _ = crate::search::query::parse(query);
    }
}

/// The controller's commands: the input as JSON lines, each decoded as a command and
/// applied to a three-node cluster's state. After every command the state still passes the
/// checks a snapshot from a leader must pass, applying is deterministic, and the state
/// survives its JSON round trip.
pub fn controller(data: &[u8]) {
    let mut state = ClusterState {
        position: Position::with_voters(&[1, 2, 3]),
        ..Default::default()
    };
    for line in data.split(|b| *b == b'\n').take(64) {
        let Ok(command) = serde_json::from_slice::<Command>(line) else {
            continue;
        };
        let mut twin = state.clone();
        let answer = state.apply(command.clone());
        assert_eq!(twin.apply(command), answer, "apply is deterministic");
        assert_eq!(twin, state);
        if let Err(e) = state.validate() {
            panic!("a command left a state that does not validate: {e}: {answer:?}");
        }
    }
    let json = serde_json::to_vec(&state).expect("the state encodes");
    let back: ClusterState = serde_json::from_slice(&json).expect("the state decodes");
    assert_eq!(back, state);
}

/// The seed inputs of every target, by target and name: written to `fuzz/corpus/` with
/// `STRATA_WRITE_SEEDS=1 cargo test -p strata-broker fuzzing`, and checked there otherwise.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use strata_storage::{BatchBuilder, NewRecord};
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |target: &'static str, bytes: Vec<u8>| {
        let n = out.iter().filter(|(t, _, _)| *t == target).count();
        out.push((target, format!("seed-{n:02}"), bytes));
    };
    // Batches: one record; keys, headers and a tombstone-like empty value; an idempotent
    // producer's; a control batch.
    let mut b = BatchBuilder::new();
    b.push(NewRecord::value(
        1_700_000_000_000,
        br#"{"t":1,"device":"d1"}"#,
    ))
    .expect("record");
    let one = b.finish().expect("batch");
    add("batch", one.as_bytes().to_vec());
    let mut b = BatchBuilder::new().producer(7, 1, 40);
    let headers: [(&str, Option<&[u8]>); 2] = [("trace", Some(b"abc")), ("none", None)];
    b.push(
        NewRecord::value(5, b"v")
            .with_key(b"k")
            .with_headers(&headers),
    )
    .expect("record");
    b.push(NewRecord::value(6, b"")).expect("record");
    b.push(NewRecord::value(-3, b"late")).expect("record");
    let keyed = b.finish().expect("batch");
    add("batch", keyed.as_bytes().to_vec());
    let mut b = BatchBuilder::new().control();
    b.push(NewRecord::value(9, br#"{"start":1}"#))
        .expect("record");
    add("batch", b.finish().expect("batch").as_bytes().to_vec());
    // Segment tails: nothing, zeros, garbage, a batch where an entry header belongs.
    add("segment_tail", Vec::new());
    add("segment_tail", vec![0; 200]);
    add(
        "segment_tail",
        (0..300u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    );
    add("segment_tail", keyed.as_bytes().to_vec());
    // Entries with their CRCs made right (odd first byte): a data entry holding a batch, a
    // blank one, and one of an unknown kind.
    let mut entries = vec![1u8];
    let mut at_eight = keyed.as_bytes().to_vec();
    at_eight[..8].copy_from_slice(&8u64.to_le_bytes()); // the log's next offset
    for (kind, index, body) in [(1u8, 8u64, at_eight), (2, 9, vec![]), (7, 10, vec![1, 2])] {
        let mut h = vec![0u8; 40];
        h[4..8].copy_from_slice(&(body.len() as u32).to_le_bytes());
        h[8] = 1;
        h[9] = kind;
        h[12..16].copy_from_slice(&u32::from(kind == 1).wrapping_mul(3).to_le_bytes());
        h[16..24].copy_from_slice(&index.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[32..40].copy_from_slice(&1u64.to_le_bytes());
        entries.extend_from_slice(&h);
        entries.extend_from_slice(&body);
    }
    add("segment_tail", entries);
    // AppendEntries: a heartbeat; a data entry and a blank one.
    use prost::Message;
    use strata_proto::v1;
    let id = |term, index| v1::RaftLogId {
        term,
        leader: 1,
        index,
    };
    let heartbeat = v1::RaftAppendRequest {
        group_id: 0x1_0000_0001,
        vote_term: 3,
        vote_node: 1,
        vote_committed: true,
        prev_log_id: Some(id(3, 10)),
        leader_commit: Some(id(3, 9)),
        entries: vec![],
    };
    add("raft_append", heartbeat.encode_to_vec());
    let entries = v1::RaftAppendRequest {
        entries: vec![
            v1::RaftEntry {
                log_id: Some(id(3, 11)),
                kind: 1,
                body: one.as_bytes().clone(),
            },
            v1::RaftEntry {
                log_id: Some(id(3, 12)),
                kind: 2,
                body: Default::default(),
            },
        ],
        ..heartbeat
    };
    add("raft_append", entries.encode_to_vec());
    // Vote, leader transfer: openraft's JSON as peers send it.
    add(
        "raft_message",
        br#"{"vote":{"leader_id":{"term":4,"node_id":2},"committed":false},"last_log_id":{"leader_id":{"term":3,"node_id":1},"index":12}}"#.to_vec(),
    );
    add(
        "raft_message",
        br#"{"from_leader":{"leader_id":{"term":4,"node_id":2},"committed":true},"to_node_id":3,"last_log_id":null}"#.to_vec(),
    );
    for doc in [
        r#"{"t":"2024-02-29T12:34:56.789Z","device":"d1","value":21.5,"a":{"b":[1,2,{"c":null}]}}"#,
        r#"{"x":{"y":{"z":-1.5e-7}},"device":"caf\u00e9 \"q\"","value":true,"t":1700000000}"#,
        r#"  {"a":1,"a":2}"#,
        r#"{"value":12345678901234567890,"t":null,"empty":{},"list":[]}"#,
    ] {
        add("agg_json", doc.as_bytes().to_vec());
    }
    for filter in [
        r#"status == "alarm" and temperature > 30"#,
        r#"not (site.region != "eu" or x <= -1.5) and flag == true"#,
        r#"a == null or (b >= 2 and (c < 3 or d == "x y"))"#,
    ] {
        add("agg_filter", filter.as_bytes().to_vec());
    }
    for query in [
        "status:alarm AND site:oslo",
        "temperature:[30 TO 40] OR value.reading:>=3.5",
        r#""exact phrase" -noise key:abc"#,
        "NOT (a:1 OR b:2) timestamp:[2024-01-01T00:00:00Z TO *]",
    ] {
        add("search_query", query.as_bytes().to_vec());
    }
    let def = crate::agg::def::AggregationDef {
        name: "per-device".into(),
        topic: "sensors".into(),
        window: crate::agg::def::Window::Tumbling { size_ms: 60_000 },
        time: crate::agg::def::TimeSource::Field("t".into()),
        group_by: vec![crate::agg::def::GroupBy::parse("device").expect("group by")],
        filter: Some("temperature > 30".into()),
        measures: vec![crate::agg::def::Measure::parse("avg(temperature)").expect("measure")],
        lateness_ms: 1_000,
        retain_ms: 3_600_000,
        emit_to: None,
        backfill: false,
    };
    let commands = [
        Command::RegisterNode {
            id: 1,
            address: "127.0.0.1:7001".into(),
        },
        Command::CreateTopic {
            name: "sensors".into(),
            config: serde_json::from_str(r#"{"partitions":3,"replication_factor":3}"#)
                .expect("topic config"),
        },
        Command::CommitOffsets {
            group: "g".into(),
            offsets: vec![("sensors".into(), 1, 5)],
            term: Some(1),
        },
        Command::CreateAggregation { def: Box::new(def) },
        Command::AllocateProducerId { owner: None },
        Command::DropAggregation {
            name: "per-device".into(),
        },
        Command::DeleteTopic {
            name: "sensors".into(),
        },
    ];
    let lines: Vec<String> = commands
        .iter()
        .map(|c| serde_json::to_string(c).expect("command encodes"))
        .collect();
    add("controller", lines.join("\n").into_bytes());
    add("controller", lines[..4].join("\n").into_bytes());
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn corpus(target: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target)
    }

    /// The seeds in `fuzz/corpus/` are the ones [`seeds`] makes (or are written, with
    /// `STRATA_WRITE_SEEDS=1`).
    #[test]
    fn the_seed_corpora_are_committed() {
        let write = std::env::var_os("STRATA_WRITE_SEEDS").is_some();
        for (target, name, bytes) in seeds() {
            let path = corpus(target).join(&name);
            if write {
                std::fs::create_dir_all(corpus(target)).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            } else {
                let committed =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(committed, bytes, "{} differs from its seed", path.display());
            }
        }
    }

    /// Every committed input of every broker target (the seeds, and what fuzzing found)
    /// runs through its target without a failure: the short form of the fuzzing in
    /// `cargo test`.
    #[test]
    fn the_fuzz_corpora_replay_without_a_failure() {
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 6] = [
            ("raft_append", crate::raft::fuzz::append),
            ("raft_message", crate::raft::fuzz::message),
            ("agg_json", agg_json),
            ("agg_filter", agg_filter),
            ("search_query", search_query),
            ("controller", controller),
        ];
        for (target, run) in targets {
            let mut inputs = 0;
            for entry in std::fs::read_dir(corpus(target)).unwrap() {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let result = std::panic::catch_unwind(|| run(&data));
                assert!(result.is_ok(), "{target}: {} fails", path.display());
                inputs += 1;
            }
            assert!(inputs > 0, "{target} has no corpus");
        }
    }
}
