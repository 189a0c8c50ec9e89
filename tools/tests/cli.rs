//! The `strata` binary against a real broker on a loopback port.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use strata_broker::{Broker, Config};

/// Runs `strata --brokers ADDR ARGS...` with `stdin`, off the async workers.
async fn strata(brokers: &str, args: &[&str], stdin: &str) -> Output {
    let (brokers, args, stdin) = (
        brokers.to_string(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        stdin.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("--brokers")
            .arg(&brokers)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn json_lines(output: &Output) -> Vec<Value> {
    assert!(
        output.status.success(),
        "strata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn start_broker(dir: &std::path::Path) -> Broker {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peer_listen: "127.0.0.1:0".parse().unwrap(),
        http: None,
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    Broker::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_produce_lines_then_consume_them_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let brokers = broker.address().to_string();

    let created = json_lines(
        &strata(
            &brokers,
            &["--json", "topic", "create", "lines", "--partitions", "2"],
            "",
        )
        .await,
    );
    assert_eq!(created[0]["name"], "lines");
    assert_eq!(created[0]["partitions"], 2);

    let input: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"id":"device-{}","n":{i}}}"#, i % 4))
        .collect();
    let summary = json_lines(
        &strata(
            &brokers,
            &["--json", "produce", "lines", "--key-field", "id"],
            &(input.join("\n") + "\n"),
        )
        .await,
    );
    assert_eq!(summary[0]["acknowledged"], 20);

    let records = json_lines(
        &strata(
            &brokers,
            &["--json", "consume", "lines", "--from-beginning"],
            "",
        )
        .await,
    );
    assert_eq!(records.len(), 20);
    let mut values: Vec<i64> = records
        .iter()
        .map(|r| r["value"]["n"].as_i64().unwrap())
        .collect();
    values.sort_unstable();
    assert_eq!(values, (0..20).collect::<Vec<_>>());
    for r in &records {
        // The key is the JSON field, and a key always lands on the same partition.
        assert_eq!(r["key"], r["value"]["id"]);
        let same_key: Vec<&Value> = records.iter().filter(|o| o["key"] == r["key"]).collect();
        assert!(same_key.iter().all(|o| o["partition"] == r["partition"]));
    }
    // Offsets are dense per partition.
    for p in 0..2 {
        let mut offsets: Vec<u64> = records
            .iter()
            .filter(|r| r["partition"] == p)
            .map(|r| r["offset"].as_u64().unwrap())
            .collect();
        offsets.sort_unstable();
        assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
    }

    let described =
        json_lines(&strata(&brokers, &["--json", "topic", "describe", "lines"], "").await);
    let total: u64 = described[0]["partition_status"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["high_watermark"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 20);
    let listed = json_lines(&strata(&brokers, &["--json", "topic", "list"], "").await);
    assert_eq!(listed.len(), 1);

    // A group reads everything, commits, and shows no lag.
    let grouped = json_lines(
        &strata(
            &brokers,
            &[
                "--json",
                "consume",
                "lines",
                "--group",
                "audit",
                "--from-beginning",
            ],
            "",
        )
        .await,
    );
    assert_eq!(grouped.len(), 20);
    let group = json_lines(&strata(&brokers, &["--json", "group", "describe", "audit"], "").await);
    let partitions = group[0]["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 2);
    assert!(
        partitions
            .iter()
            .all(|p| p["lag"] == 0 && p["committed"] == p["high_watermark"]),
        "{group:?}"
    );
    // Read again with the group: nothing new.
    let again = json_lines(
        &strata(
            &brokers,
            &["--json", "consume", "lines", "--group", "audit"],
            "",
        )
        .await,
    );
    assert!(again.is_empty());

    // Errors are one clear line and a failing exit code.
    let missing = strata(&brokers, &["consume", "missing"], "").await;
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("unknown topic `missing`"),
        "{stderr}"
    );
    let bad = strata(&brokers, &["topic", "create", "bad name"], "").await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid name"));

    broker.shutdown().await.unwrap();
}

/// Lines of events for `strata produce --key-field k`: every third one an error.
fn events(numbers: std::ops::Range<u64>) -> String {
    numbers
        .map(|n| {
            let (level, status) = if n % 3 == 0 { ("error", 500) } else { ("info", 200) };
            format!(
                r#"{{"k":"d{}","n":{n},"level":"{level}","msg":"disk full {n}","http":{{"status":{status},"path":"/p"}}}}"#,
                n % 5
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The `n` of each hit line (the summary line has none).
fn numbers(lines: &[Value]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l["value"]["n"].as_u64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t02_search_indexes_only_the_listed_fields_and_follow_prints_each_new_match_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let brokers = broker.address().to_string();
    let create = [
        "--json",
        "topic",
        "create",
        "logs",
        "--partitions",
        "3",
        "--search-fields",
        "level,http.status",
    ];
    json_lines(&strata(&brokers, &create, "").await);
    let produce = ["--json", "produce", "logs", "--key-field", "k"];
    json_lines(&strata(&brokers, &produce, &events(0..30)).await);

    // Listed fields are searchable (a nested one too); the others are not indexed, and a bare
    // word only sees the strings of the listed fields.
    let search = |query: &'static str| {
        let brokers = brokers.clone();
        async move {
            let args = [
                "--json", "search", query, "--topic", "logs", "--limit", "100",
            ];
            json_lines(&strata(&brokers, &args, "").await)
        }
    };
    let errors: Vec<u64> = (0..30).filter(|n| n % 3 == 0).collect();
    for query in [
        "level:error",
        "http.status:500",
        "error",
        "http.status:[400 TO *]",
    ] {
        let lines = search(query).await;
        let mut found = numbers(&lines);
        found.sort_unstable();
        assert_eq!(found, errors, "{query}");
        assert_eq!(lines.last().unwrap()["total"], 10, "{query}");
    }
    for query in ["msg:disk", "full", "http.path:p", "k:d1"] {
        let lines = search(query).await;
        assert_eq!(lines, vec![lines.last().unwrap().clone()], "{query}");
        assert_eq!(lines[0]["total"], 0, "{query}");
    }

    // --follow: the 5 newest errors, then every new error once, in pages of 1,000 when many
    // arrive between two polls.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["--brokers", &brokers, "--json", "search", "level:error"])
        .args(["--topic", "logs", "--follow", "--limit", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                return;
            }
        }
    });
    let mut read = async |n: usize| {
        let mut lines = Vec::new();
        while lines.len() < n {
            let line = tokio::time::timeout(std::time::Duration::from_secs(60), rx.recv())
                .await
                .expect("--follow printed nothing for 60 s")
                .expect("--follow exited");
            lines.push(line);
        }
        lines
    };
    let first = numbers(&read(5).await);
    assert_eq!(first.len(), 5);
    assert!(first.iter().all(|n| errors.contains(n)), "{first:?}");

    json_lines(&strata(&brokers, &produce, &events(30..3630)).await);
    let followed = read(1200).await;
    let mut found = numbers(&followed);
    found.sort_unstable();
    let expected: Vec<u64> = (30..3630).filter(|n| n % 3 == 0).collect();
    assert_eq!(found, expected);
    // In each partition, the order the log has.
    for p in 0..3 {
        let offsets: Vec<u64> = followed
            .iter()
            .filter(|l| l["partition"] == p)
            .map(|l| l["offset"].as_u64().unwrap())
            .collect();
        assert!(offsets.is_sorted(), "partition {p}: {offsets:?}");
    }
    // Nothing is printed twice: the next line is the next error produced.
    json_lines(&strata(&brokers, &produce, &events(3630..3634)).await);
    let mut last = numbers(&read(2).await);
    last.sort_unstable();
    assert_eq!(last, vec![3630, 3633]);

    child.kill().unwrap();
    child.wait().unwrap();
    broker.shutdown().await.unwrap();
}
