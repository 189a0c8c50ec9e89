//! Output for people (aligned tables) and for scripts (`--json`).

use serde_json::Value;

/// Prints rows as an aligned table with a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    println!("{}", line(header.iter().map(|h| h.to_string()).collect()));
    for row in rows {
        println!("{}", line(row.clone()));
    }
}

/// Prints a JSON value on one line.
pub fn json(value: &Value) {
    println!("{value}");
}

/// A record as `--json` prints it: the value as JSON when it is JSON, else as text; the key
/// as text.
pub fn record_json(
    topic: &str,
    partition: u32,
    offset: u64,
    timestamp: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Value {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let value =
        value.map(|v| serde_json::from_slice::<Value>(v).unwrap_or_else(|_| text(v).into()));
    serde_json::json!({"topic": topic, "partition": partition, "offset": offset,
        "timestamp": timestamp, "key": key.map(text), "value": value})
}
