//! The WAL's record framing: `[len u32 LE][crc32 u32 LE of type+payload][type u8][payload]`.
//!
//! `len` counts the payload bytes only. A header of nine zero bytes is never written (type 0
//! does not exist), so it marks the end of the data in a preallocated (zero-filled) segment.
//! This module only frames bytes; it must not do I/O or know what the payloads mean.

/// Bytes in front of every payload: length, CRC, type.
pub(crate) const RECORD_HEADER_BYTES: usize = 9;

/// Largest payload a record may carry. An entry is bounded far below this by the gRPC message
/// limit (16 MiB); a larger length field on replay is therefore damage, not data.
pub(crate) const MAX_RECORD_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;

/// What a record holds. The byte values are part of the on-disk format: never reuse one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordKind {
    /// First record of every segment: the log state at the segment's creation.
    SegmentHeader = 1,
    /// One Raft entry (the codec's tagged postcard encoding of `openraft::Entry`).
    Entry = 2,
    /// The vote.
    Vote = 3,
    /// The committed marker.
    Committed = 4,
    /// Every entry from this index on is deleted.
    Truncate = 5,
    /// Every entry up to this log id is purged.
    Purge = 6,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::SegmentHeader,
            2 => Self::Entry,
            3 => Self::Vote,
            4 => Self::Committed,
            5 => Self::Truncate,
            6 => Self::Purge,
            _ => return None,
        })
    }
}

/// Appends one framed record to `out`; returns the payload's offset within `out`.
pub(crate) fn push(out: &mut Vec<u8>, kind: RecordKind, payload: &[u8]) -> usize {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind as u8]);
    crc.update(payload);
    // Callers bound payloads by MAX_RECORD_PAYLOAD_BYTES (checked in `check_len`).
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind as u8);
    let at = out.len();
    out.extend_from_slice(payload);
    at
}

/// Whether a payload of `len` bytes may be written.
pub(crate) fn check_len(len: usize) -> bool {
    len <= MAX_RECORD_PAYLOAD_BYTES
}

/// The outcome of reading the record at some offset of a segment's bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read<'a> {
    /// A whole record with a matching CRC; the next record starts at `next`.
    Record {
        kind: RecordKind,
        payload: &'a [u8],
        next: usize,
    },
    /// The clean end: no bytes left, or a zero header (the preallocated region).
    End,
    /// Not a valid record: cut short, a wrong CRC, an impossible length.
    Invalid(String),
    /// A record with a valid CRC but a type this version does not know (a newer format).
    UnknownKind(u8),
}

/// Reads the record starting at `at` in `bytes`.
pub(crate) fn read(bytes: &[u8], at: usize) -> Read<'_> {
    let rest = bytes.get(at..).unwrap_or_default();
    if rest.is_empty() {
        return Read::End;
    }
    let Some((header, body)) = rest.split_first_chunk::<RECORD_HEADER_BYTES>() else {
        return Read::Invalid(format!(
            "{} bytes, shorter than a record header",
            rest.len()
        ));
    };
    if header.iter().all(|&b| b == 0) {
        return Read::End;
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let kind = header[8];
    if !check_len(len) {
        return Read::Invalid(format!("length {len} over the record limit"));
    }
    let Some(payload) = body.get(..len) else {
        return Read::Invalid(format!("record of {len} bytes cut at {}", body.len()));
    };
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(payload);
    if hasher.finalize() != crc {
        return Read::Invalid("CRC mismatch".into());
    }
    match RecordKind::from_byte(kind) {
        Some(kind) => Read::Record {
            kind,
            payload,
            next: at + RECORD_HEADER_BYTES + len,
        },
        None => Read::UnknownKind(kind),
    }
}

/// Verifies a record read back from a file at a known position (payload and header together).
pub(crate) fn verify(record: &[u8], expected: RecordKind) -> Result<&[u8], String> {
    match read(record, 0) {
        Read::Record {
            kind,
            payload,
            next,
        } if kind == expected && next == record.len() => Ok(payload),
        other => Err(format!("expected a {expected:?} record, found {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A framed record reads back as itself, and the next one starts right after it.
    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        let at = push(&mut buf, RecordKind::Entry, b"hello");
        assert_eq!(at, RECORD_HEADER_BYTES);
        push(&mut buf, RecordKind::Vote, b"");
        let Read::Record {
            kind,
            payload,
            next,
        } = read(&buf, 0)
        else {
            panic!("not a record")
        };
        assert_eq!((kind, payload), (RecordKind::Entry, &b"hello"[..]));
        assert!(matches!(
            read(&buf, next),
            Read::Record {
                kind: RecordKind::Vote,
                ..
            }
        ));
        assert_eq!(read(&buf, buf.len()), Read::End);
    }

    /// Pinned bytes: the framing is an on-disk format and must not change by accident.
    #[test]
    fn fixed_vector() {
        let mut buf = Vec::new();
        push(&mut buf, RecordKind::Truncate, &[7]);
        assert_eq!(buf, [1, 0, 0, 0, 0x19, 0x73, 0xca, 0xa2, 5, 7]);
    }

    /// Every single-byte flip, every cut and a zero header are detected, never misread.
    #[test]
    fn damage_is_detected() {
        let mut buf = Vec::new();
        push(&mut buf, RecordKind::Entry, b"some payload bytes");
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(
                !matches!(read(&bad, 0), Read::Record { .. }),
                "flip at {i} went unnoticed"
            );
        }
        for cut in 1..buf.len() {
            assert!(
                matches!(read(&buf[..cut], 0), Read::Invalid(_)),
                "cut {cut}"
            );
        }
        assert_eq!(read(&[0; 32], 0), Read::End);
        let mut unknown = Vec::new();
        push(&mut unknown, RecordKind::Entry, b"x");
        unknown[8] = 99;
        // The CRC covers the type byte, so a changed type is a CRC mismatch.
        assert!(matches!(read(&unknown, 0), Read::Invalid(_)));
    }
}
