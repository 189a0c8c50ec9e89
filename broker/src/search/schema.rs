//! The index schema every partition replica shares, and how a record becomes a document.
//!
//! Fields: `offset` and `partition` (u64, indexed, fast), `timestamp` (date at millisecond
//! precision, indexed, fast), `key` (the raw key as one term), `value` (the value as a JSON
//! field when it is a JSON object: strings tokenized, numbers and dates typed and
//! range-queryable through its fast columns) and `_text` (every string of the value, or the
//! whole value when it is not a JSON object, tokenized: what a bare word searches). Nothing is
//! stored: hits are resolved to records by offset from the log.

use std::sync::LazyLock;

use serde_json::{Map, Value};
use strata_storage::Record;
use tantivy::schema::{
    DateOptions, DateTimePrecision, FAST, Field, INDEXED, IndexRecordOption, JsonObjectOptions,
    STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::{DateTime, TantivyDocument};

/// The fields of the schema.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields {
    pub offset: Field,
    pub timestamp: Field,
    pub partition: Field,
    pub key: Field,
    pub value: Field,
    pub text: Field,
}

/// Names a query may use without the `value.` prefix; any other field name is a path into
/// the value.
pub(crate) const TOP_LEVEL: [&str; 5] = ["offset", "timestamp", "partition", "key", "value"];

/// The one schema (built once; every index and every query uses it).
pub(crate) static SCHEMA: LazyLock<(Schema, Fields)> = LazyLock::new(build);

fn build() -> (Schema, Fields) {
    let mut sb = Schema::builder();
    let offset = sb.add_u64_field("offset", INDEXED | FAST);
    let timestamp = sb.add_date_field(
        "timestamp",
        DateOptions::default()
            .set_indexed()
            .set_fast()
            .set_precision(DateTimePrecision::Milliseconds),
    );
    let partition = sb.add_u64_field("partition", INDEXED | FAST);
    let key = sb.add_text_field("key", STRING);
    let value = sb.add_json_field(
        "value",
        JsonObjectOptions::default()
            .set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer("default")
                    .set_index_option(IndexRecordOption::WithFreqsAndPositions),
            )
            .set_fast("raw")
            .set_expand_dots_enabled(),
    );
    let text = sb.add_text_field(
        "_text",
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("default")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        ),
    );
    let fields = Fields {
        offset,
        timestamp,
        partition,
        key,
        value,
        text,
    };
    (sb.build(), fields)
}

/// Which parts of a value are indexed: every field, or only the listed JSON paths.
#[derive(Debug, Clone, Default)]
pub(crate) struct Projection {
    paths: Vec<Vec<String>>,
}

impl Projection {
    /// From a topic's `search_fields` (dotted paths); empty means every field.
    pub fn new(fields: &[String]) -> Self {
        Projection {
            paths: fields
                .iter()
                .map(|f| f.split('.').map(str::to_string).collect())
                .collect(),
        }
    }

    fn project(&self, object: Map<String, Value>) -> Map<String, Value> {
        if self.paths.is_empty() {
            return object;
        }
        let mut out = Map::new();
        let root = Value::Object(object);
        for path in &self.paths {
            let mut at = &root;
            let mut found = true;
            for part in path {
                match at.get(part) {
                    Some(v) => at = v,
                    None => {
                        found = false;
                        break;
                    }
                }
            }
            if found {
                insert_path(&mut out, path, at.clone());
            }
        }
        out
    }
}

/// Checks a topic's list of fields to index: each a JSON path (names separated by dots).
pub(crate) fn validate_fields(fields: &[String]) -> Result<(), String> {
    for f in fields {
        if f.is_empty() || f.split('.').any(str::is_empty) || f.chars().any(char::is_whitespace) {
            return Err(format!(
                "search field `{f}` is not a JSON path (names separated by dots, e.g. http.status)"
            ));
        }
    }
    Ok(())
}

fn insert_path(out: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = out;
    for part in parents {
        let next = at
            .entry(part.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        let Value::Object(map) = next else { return };
        at = map;
    }
    at.insert(last.clone(), value);
}

/// Appends every string leaf of `value` to `text`, separated by newlines.
fn strings(value: &Value, text: &mut String) {
    match value {
        Value::String(s) => {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(s);
        }
        Value::Array(items) => items.iter().for_each(|v| strings(v, text)),
        Value::Object(map) => map.values().for_each(|v| strings(v, text)),
        _ => {}
    }
}

/// The document of one record.
pub(crate) fn document(
    partition: u32,
    record: &Record<'_>,
    projection: &Projection,
) -> TantivyDocument {
    let f = &SCHEMA.1;
    let mut doc = TantivyDocument::new();
    doc.add_u64(f.offset, record.offset);
    doc.add_date(
        f.timestamp,
        DateTime::from_timestamp_millis(record.timestamp),
    );
    doc.add_u64(f.partition, u64::from(partition));
    if let Some(key) = record.key {
        doc.add_text(f.key, String::from_utf8_lossy(key));
    }
    let Some(value) = record.value else {
        return doc;
    };
    let mut text = String::new();
    match serde_json::from_slice::<Map<String, Value>>(value) {
        Ok(object) => {
            let object = Value::Object(projection.project(object));
            strings(&object, &mut text);
            doc.add_field_value(f.value, &object);
        }
        Err(_) => text.push_str(&String::from_utf8_lossy(value)),
    }
    if !text.is_empty() {
        doc.add_text(f.text, text);
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn projection_keeps_only_the_listed_paths() {
        let p = Projection::new(&["level".into(), "http.status".into(), "missing.x".into()]);
        let v = json!({"level": "error", "msg": "boom", "http": {"status": 500, "path": "/"}});
        let Value::Object(o) = v else { unreachable!() };
        let out = Value::Object(p.project(o));
        assert_eq!(out, json!({"level": "error", "http": {"status": 500}}));
    }

    #[test]
    fn text_gathers_every_string_leaf() {
        let mut text = String::new();
        strings(
            &json!({"a": "x y", "b": [1, "z"], "c": {"d": "w"}, "e": true}),
            &mut text,
        );
        assert_eq!(text, "x y\nz\nw");
    }
}
