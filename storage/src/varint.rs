//! Zig-zag varints (as in protobuf's `sint64` and Kafka's record format).
//!
//! Encoding appends to a `Vec`; decoding reads from a slice at a cursor and answers `None`
//! rather than reading past the end, so a truncated or over-long varint is an error for the
//! caller, never a panic.

/// Longest encoding of a 64-bit varint.
pub(crate) const MAX_VARINT_LEN: usize = 10;

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// Appends `v` as a zig-zag varint.
pub(crate) fn put_varint(buf: &mut Vec<u8>, v: i64) {
    let mut u = zigzag(v);
    while u >= 0x80 {
        buf.push((u as u8) | 0x80);
        u >>= 7;
    }
    buf.push(u as u8);
}

/// Bytes `put_varint(v)` writes.
pub(crate) fn varint_len(v: i64) -> usize {
    let u = zigzag(v);
    // 1 byte per started group of 7 bits, at least one.
    let bits = 64 - (u | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Reads a zig-zag varint at `*pos`, advancing it. `None` if the buffer ends first or the
/// encoding runs past ten bytes or 64 bits.
pub(crate) fn get_varint(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let mut result: u64 = 0;
    for i in 0..MAX_VARINT_LEN {
        let byte = *buf.get(*pos + i)?;
        let part = u64::from(byte & 0x7f);
        if i == MAX_VARINT_LEN - 1 && part > 1 {
            return None; // more than 64 bits
        }
        result |= part << (7 * i);
        if byte & 0x80 == 0 {
            *pos += i + 1;
            return Some(unzigzag(result));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_edges() {
        for v in [
            0,
            1,
            -1,
            63,
            -64,
            64,
            -65,
            i32::MAX as i64,
            i32::MIN as i64,
            i64::MAX,
            i64::MIN,
        ] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(buf.len(), varint_len(v), "length of {v}");
            let mut pos = 0;
            assert_eq!(get_varint(&buf, &mut pos), Some(v));
            assert_eq!(pos, buf.len());
        }
    }

    #[test]
    fn rejects_truncated_and_overlong() {
        let mut buf = Vec::new();
        put_varint(&mut buf, i64::MIN);
        for cut in 0..buf.len() {
            let mut pos = 0;
            assert_eq!(get_varint(&buf[..cut], &mut pos), None, "cut at {cut}");
            assert_eq!(pos, 0);
        }
        let overlong = [0xffu8; 11];
        assert_eq!(get_varint(&overlong, &mut 0), None);
        let too_big = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(get_varint(&too_big, &mut 0), None);
    }
}
