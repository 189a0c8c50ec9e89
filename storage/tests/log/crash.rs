//! Crash recovery: a child process appends, the parent kills it with SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use strata_storage::{EntryBody, LogConfig, PartitionLog, RecordBatch};

use crate::{check_crash_batch, crash_batch};

const CHILD_ENV: &str = "STRATA_CRASH_CHILD_DIR";

fn crash_config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 * 1024,
        max_entry_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

/// Not a test on its own: the child process of `t10`. Appends from two threads with
/// `FsyncPolicy::Always` and prints `index thread seq` after each append is durable.
#[test]
#[ignore = "run by t10 as a child process"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let log = PartitionLog::open(PathBuf::from(dir), crash_config()).unwrap();
    let start = log.state().next_index;
    let deadline = Instant::now() + Duration::from_secs(20);
    let threads: Vec<_> = (0..2u64)
        .map(|thread| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut seq = start * 10;
                while Instant::now() < deadline {
                    let appending = log
                        .append(1, 1, EntryBody::Data(crash_batch(thread, seq)))
                        .unwrap();
                    appending.wait().unwrap();
                    let line = format!("{} {thread} {seq}\n", appending.first.log_id.index);
                    std::io::Write::write_all(&mut std::io::stdout().lock(), line.as_bytes())
                        .unwrap();
                    seq += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// t10: at least 50 SIGKILLs at random moments (during appends, during recovery); after
/// each, every append the child reported durable is intact at its index, and every entry
/// the log shows is a whole, correct batch.
#[test]
fn t10_sigkill_loses_no_acknowledged_append() {
    let seed: u64 = std::env::var("STRATA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe);
    println!("crash test seed {seed} (set STRATA_CRASH_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acknowledged: Vec<(u64, u64, u64)> = Vec::new();
    let mut kills = 0;
    let mut kills_before_first_ack = 0;
    while kills < 60 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash::crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let parts: Vec<u64> = line
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect();
                if parts.len() == 3 && tx.send((parts[0], parts[1], parts[2])).is_err() {
                    break;
                }
            }
        });
        // Kill at a random moment: sometimes before the child got going, mostly while it
        // appends.
        if rng.random_bool(0.15) {
            std::thread::sleep(Duration::from_micros(rng.random_range(0..20_000)));
            kills_before_first_ack += 1;
        } else {
            let first = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the child never acknowledged an append");
            acknowledged.push(first);
            std::thread::sleep(Duration::from_micros(rng.random_range(0..30_000)));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        reader.join().unwrap();
        acknowledged.extend(rx.try_iter());

        let log = PartitionLog::open(dir.path(), crash_config()).unwrap();
        let state = log.state();
        let max_acked = acknowledged.iter().map(|a| a.0).max();
        if let Some(max) = max_acked {
            assert!(
                state.next_index > max,
                "kill {kills}: acknowledged index {max} lost (log ends at {})",
                state.next_index
            );
        }
        for &(index, thread, seq) in &acknowledged {
            let entry = log
                .entry(index)
                .unwrap()
                .unwrap_or_else(|| panic!("kill {kills}: entry {index} missing"));
            let batch = RecordBatch::from_bytes(entry.body).unwrap();
            assert_eq!(
                check_crash_batch(&batch),
                Some((thread, seq)),
                "kill {kills}: wrong content at {index}"
            );
        }
        // Nothing unreadable is exposed: every entry checks out, offsets are dense.
        let mut offset = state.start_offset;
        for entry in log.entries(0..state.next_index, usize::MAX).unwrap() {
            let batch = RecordBatch::from_bytes(entry.body).unwrap();
            assert!(
                check_crash_batch(&batch).is_some(),
                "kill {kills}: entry {} is not a batch we wrote",
                entry.log_id.index
            );
            assert_eq!(batch.base_offset(), offset);
            offset += u64::from(batch.record_count());
        }
        assert_eq!(offset, state.next_offset);
        assert!(log.verify().unwrap().damaged.is_empty());
        drop(log);
    }
    println!(
        "{kills} kills ({kills_before_first_ack} early), {} acknowledged appends checked",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() > kills,
        "the child made too little progress to test anything"
    );
}
