use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
struct OwnedRecord {
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

fn owned_record() -> impl Strategy<Value = OwnedRecord> {
    let bytes = || proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64));
    let headers = proptest::collection::vec(("[a-z\u{e9}]{0,8}", bytes()), 0..3);
    let timestamp = prop_oneof![any::<i64>(), 1_600_000_000_000i64..1_800_000_000_000];
    (timestamp, bytes(), bytes(), headers).prop_map(|(timestamp, key, value, headers)| {
        OwnedRecord {
            timestamp,
            key,
            value,
            headers,
        }
    })
}

fn build(records: &[OwnedRecord], producer: Option<(i64, i16, i32)>) -> RecordBatch {
    let mut builder = BatchBuilder::new();
    if let Some((id, epoch, seq)) = producer {
        builder = builder.producer(id, epoch, seq);
    }
    for r in records {
        let headers: Vec<(&str, Option<&[u8]>)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        let record = NewRecord {
            timestamp: r.timestamp,
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            headers: &headers,
        };
        let expected_growth = builder.encoded_len(&record);
        let before = builder.len();
        builder.push(record).expect("push");
        assert_eq!(builder.len() - before, expected_growth);
    }
    builder.finish().expect("finish")
}

/// A fixed batch used by the exhaustive truncation and bit-flip tests.
fn sample_batch() -> RecordBatch {
    let records = vec![
        OwnedRecord {
            timestamp: 1_700_000_000_000,
            key: Some(b"k1".to_vec()),
            value: Some(b"v1".to_vec()),
            headers: vec![],
        },
        OwnedRecord {
            timestamp: 1_700_000_000_500,
            key: None,
            value: Some(br#"{"device":"d1","temp":21.5}"#.to_vec()),
            headers: vec![
                ("trace".into(), Some(b"abc".to_vec())),
                ("empty".into(), None),
            ],
        },
        OwnedRecord {
            timestamp: 1_699_999_999_000,
            key: Some(vec![]),
            value: None,
            headers: vec![],
        },
    ];
    build(&records, Some((7, 1, 42)))
}

proptest! {
    #[test]
    fn round_trip(records in proptest::collection::vec(owned_record(), 1..20),
                  producer in proptest::option::of((0i64..1000, 0i16..10, 0i32..1000))) {
        let batch = build(&records, producer);
        let parsed = RecordBatch::from_bytes(batch.as_bytes().clone()).expect("valid");
        prop_assert_eq!(parsed.record_count() as usize, records.len());
        prop_assert_eq!(parsed.first_timestamp(), records[0].timestamp);
        prop_assert_eq!(parsed.max_timestamp(), records.iter().map(|r| r.timestamp).max().unwrap());
        let (id, epoch, seq) = producer.unwrap_or((-1, -1, -1));
        prop_assert_eq!((parsed.producer_id(), parsed.producer_epoch(), parsed.base_sequence()), (id, epoch, seq));
        prop_assert_eq!(parsed.records().len(), records.len());
        for (i, (got, want)) in parsed.records().zip(&records).enumerate() {
            prop_assert_eq!(got.offset, i as u64);
            prop_assert_eq!(got.timestamp, want.timestamp);
            prop_assert_eq!(got.key, want.key.as_deref());
            prop_assert_eq!(got.value, want.value.as_deref());
            let headers: Vec<(&str, Option<&[u8]>)> = got.headers.iter().collect();
            let want_headers: Vec<(&str, Option<&[u8]>)> =
                want.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
            prop_assert_eq!(headers, want_headers);
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = RecordBatch::from_bytes(Bytes::from(bytes));
    }

    /// Garbage with a correct frame and CRC reaches the record parser; it must still not panic.
    #[test]
    fn garbage_with_valid_crc_never_panics(body in proptest::collection::vec(any::<u8>(), 37..300), count in 1u32..5) {
        let mut buf = vec![0u8; BATCH_CRC_START];
        buf.extend_from_slice(&body);
        buf[layout::VERSION] = BATCH_VERSION;
        buf[layout::ATTRIBUTES..layout::ATTRIBUTES + 2].copy_from_slice(&0u16.to_le_bytes());
        buf[layout::RECORD_COUNT..layout::RECORD_COUNT + 4].copy_from_slice(&count.to_le_bytes());
        buf[layout::PRODUCER_ID..layout::PRODUCER_ID + 8].copy_from_slice(&(-1i64).to_le_bytes());
        buf[layout::BASE_SEQUENCE..layout::BASE_SEQUENCE + 4].copy_from_slice(&(-1i32).to_le_bytes());
        let len = (buf.len() - BATCH_LENGTH_FIELD_END) as u32;
        buf[layout::LENGTH..layout::LENGTH + 4].copy_from_slice(&len.to_le_bytes());
        let crc = crc32fast::hash(&buf[BATCH_CRC_START..]);
        buf[layout::CRC..layout::CRC + 4].copy_from_slice(&crc.to_le_bytes());
        if let Ok(batch) = RecordBatch::from_bytes(Bytes::from(buf)) {
            // Whatever parsed must iterate fully.
            prop_assert_eq!(batch.records().count(), batch.record_count() as usize);
        }
    }
}

#[test]
fn every_truncation_is_rejected() {
    let batch = sample_batch();
    let bytes = batch.as_bytes();
    for cut in 0..bytes.len() {
        let err =
            RecordBatch::from_bytes(bytes.slice(..cut)).expect_err("truncated batch accepted");
        assert!(
            matches!(err, Error::BatchTruncated { .. }),
            "cut at {cut}: {err}"
        );
    }
    // And trailing garbage is rejected too.
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(matches!(
        RecordBatch::from_bytes(Bytes::from(longer)),
        Err(Error::BatchLengthMismatch { .. })
    ));
}

#[test]
fn every_single_bit_flip_outside_the_base_offset_is_caught() {
    let batch = sample_batch();
    let original = batch.as_bytes().to_vec();
    for byte in layout::LENGTH..original.len() {
        for bit in 0..8 {
            let mut flipped = original.clone();
            flipped[byte] ^= 1 << bit;
            let result = RecordBatch::from_bytes(Bytes::from(flipped));
            assert!(
                result.is_err(),
                "flip of bit {bit} in byte {byte} went unnoticed"
            );
            if byte >= layout::CRC {
                assert!(
                    matches!(result, Err(Error::BatchCrcMismatch { .. })),
                    "flip of bit {bit} in byte {byte}: {result:?}"
                );
            }
        }
    }
}

#[test]
fn base_offset_is_outside_the_crc_so_it_can_be_patched() {
    let batch = sample_batch();
    let mut bytes = batch.as_bytes().to_vec();
    patch_base_offset(&mut bytes, 1_000);
    let patched = RecordBatch::from_bytes(Bytes::from(bytes)).expect("still valid");
    assert_eq!(patched.base_offset(), 1_000);
    assert_eq!(patched.last_offset(), 1_002);
    let offsets: Vec<u64> = patched.records().map(|r| r.offset).collect();
    assert_eq!(offsets, vec![1_000, 1_001, 1_002]);
}

#[test]
fn structural_rules_are_enforced_even_with_a_valid_crc() {
    fn reseal(mut bytes: Vec<u8>) -> Bytes {
        let crc = crc32fast::hash(&bytes[BATCH_CRC_START..]);
        bytes[layout::CRC..layout::CRC + 4].copy_from_slice(&crc.to_le_bytes());
        Bytes::from(bytes)
    }
    let original = sample_batch().as_bytes().to_vec();

    let mut v = original.clone();
    v[layout::VERSION] = 2;
    assert!(matches!(
        RecordBatch::from_bytes(reseal(v)),
        Err(Error::UnsupportedBatchVersion(2))
    ));

    let mut v = original.clone();
    v[layout::ATTRIBUTES] = 1; // gzip, not supported
    assert!(matches!(
        RecordBatch::from_bytes(reseal(v)),
        Err(Error::UnsupportedBatchAttributes(1))
    ));

    let mut v = original.clone();
    v[layout::RECORD_COUNT] = 4; // one more than there is
    assert!(matches!(
        RecordBatch::from_bytes(reseal(v)),
        Err(Error::BatchMalformed { .. })
    ));

    let mut v = original.clone();
    v[layout::RECORD_COUNT] = 2; // one fewer: trailing bytes
    assert!(matches!(
        RecordBatch::from_bytes(reseal(v)),
        Err(Error::BatchMalformed { .. })
    ));

    let mut v = original.clone();
    v[layout::RECORD_COUNT] = 0;
    assert!(matches!(
        RecordBatch::from_bytes(reseal(v)),
        Err(Error::EmptyBatch)
    ));

    let mut v = original;
    v[layout::MAX_TIMESTAMP] ^= 1;
    assert!(matches!(
        RecordBatch::from_bytes(reseal(v)),
        Err(Error::BatchMalformed { .. })
    ));
}

#[test]
fn empty_builder_is_an_error() {
    assert!(matches!(
        BatchBuilder::new().finish(),
        Err(Error::EmptyBatch)
    ));
}

#[test]
fn shared_values_are_zero_copy() {
    let batch = sample_batch();
    let record = batch.records().nth(1).unwrap();
    let value = batch.share(record.value.unwrap());
    assert_eq!(&value[..], br#"{"device":"d1","temp":21.5}"#);
    let start = batch.as_bytes().as_ptr() as usize;
    let at = value.as_ptr() as usize;
    assert!(at > start && at < start + batch.len(), "value was copied");
}
