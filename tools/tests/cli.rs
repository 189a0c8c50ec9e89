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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_produce_lines_then_consume_them_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        http: None,
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let broker = Broker::start(config).await.unwrap();
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
