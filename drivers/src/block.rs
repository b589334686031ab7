//! IEEE 488.2 arbitrary block data: `#<n><len><data>` (definite length:
//! one digit `n` giving the number of length digits, `len` in decimal, then
//! `len` bytes) and `#0<data>` (indefinite: data up to the message
//! terminator). Parsing never panics on any input; "need more bytes" is
//! `Ok(None)`, not an error.

/// Where a block's data starts, and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockHeader {
    /// `#<n><len>`: exactly `len` data bytes start at `data_start`.
    Definite {
        /// Offset of the first data byte in the buffer.
        data_start: usize,
        /// Number of data bytes.
        len: usize,
    },
    /// `#0`: data starts at `data_start` and runs to the terminator.
    Indefinite {
        /// Offset of the first data byte in the buffer.
        data_start: usize,
    },
}

/// A malformed block header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The reply does not start with `#`.
    #[error("binary block must start with '#', got {0:?}")]
    NoHash(u8),
    /// The digit after `#` is not 0-9.
    #[error("binary block: length-of-length {0:?} is not a digit")]
    BadDigitCount(u8),
    /// A length digit is not 0-9.
    #[error("binary block: length digit {0:?} is not a digit")]
    BadLength(u8),
    /// The announced length does not fit in memory limits.
    #[error("binary block of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// Announced length.
        len: usize,
        /// Allowed maximum.
        max: usize,
    },
}

/// Parse a block header at the start of `buf` (leading ASCII whitespace is
/// skipped). `Ok(None)`: more bytes are needed. Lengths over `max` are an
/// error, so a garbage header cannot make the reader allocate gigabytes.
pub fn parse_header(buf: &[u8], max: usize) -> Result<Option<BlockHeader>, BlockError> {
    let start = match buf.iter().position(|b| !b.is_ascii_whitespace()) {
        Some(i) => i,
        None => return Ok(None),
    };
    let rest = buf.get(start..).unwrap_or_default();
    let Some(&first) = rest.first() else {
        return Ok(None);
    };
    if first != b'#' {
        return Err(BlockError::NoHash(first));
    }
    let Some(&count) = rest.get(1) else {
        return Ok(None);
    };
    if !count.is_ascii_digit() {
        return Err(BlockError::BadDigitCount(count));
    }
    let n = usize::from(count - b'0');
    if n == 0 {
        return Ok(Some(BlockHeader::Indefinite {
            data_start: start + 2,
        }));
    }
    let Some(digits) = rest.get(2..2 + n) else {
        // Check what we have so far, to fail early on garbage.
        if let Some(&b) = rest
            .get(2..)
            .unwrap_or_default()
            .iter()
            .find(|b| !b.is_ascii_digit())
        {
            return Err(BlockError::BadLength(b));
        }
        return Ok(None);
    };
    let mut len: usize = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(BlockError::BadLength(d));
        }
        len = len.saturating_mul(10).saturating_add(usize::from(d - b'0'));
    }
    if len > max {
        return Err(BlockError::TooLong { len, max });
    }
    Ok(Some(BlockHeader::Definite {
        data_start: start + 2 + n,
        len,
    }))
}

/// Decode a whole definite-length block from `buf`: `Ok(Some((data,
/// consumed)))`, `Ok(None)` if `buf` is incomplete. An indefinite block
/// (`#0`) is returned up to the first `terminator` byte sequence.
pub fn decode<'a>(
    buf: &'a [u8],
    terminator: &[u8],
    max: usize,
) -> Result<Option<(&'a [u8], usize)>, BlockError> {
    match parse_header(buf, max)? {
        None => Ok(None),
        Some(BlockHeader::Definite { data_start, len }) => {
            let end = data_start.saturating_add(len);
            Ok(buf.get(data_start..end).map(|d| (d, end)))
        }
        Some(BlockHeader::Indefinite { data_start }) => {
            let rest = buf.get(data_start..).unwrap_or_default();
            let found = if terminator.is_empty() {
                None
            } else {
                rest.windows(terminator.len()).position(|w| w == terminator)
            };
            match found {
                Some(i) => {
                    let data = rest.get(..i).unwrap_or_default();
                    Ok(Some((data, data_start + i + terminator.len())))
                }
                None if rest.len() > max => Err(BlockError::TooLong {
                    len: rest.len(),
                    max,
                }),
                None => Ok(None),
            }
        }
    }
}

/// Encode `data` as a definite-length block (what an instrument sends).
pub fn encode(data: &[u8]) -> Vec<u8> {
    let len = data.len().to_string();
    let mut out = Vec::with_capacity(data.len() + len.len() + 2);
    out.push(b'#');
    // A length of up to 9 digits fits the one-digit count.
    out.extend_from_slice(len.len().to_string().as_bytes());
    out.extend_from_slice(len.as_bytes());
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    #[test]
    fn decodes_the_table() {
        type Want = Result<Option<(&'static [u8], usize)>, BlockError>;
        let table: Vec<(&[u8], Want)> = vec![
            (b"#15hello\n", Ok(Some((b"hello", 8)))),
            (b"#210abcdefghij", Ok(Some((b"abcdefghij", 14)))),
            (b"  #13abc", Ok(Some((b"abc", 8)))),
            (b"#10", Ok(Some((b"", 3)))),
            (b"#0raw bytes\n", Ok(Some((b"raw bytes", 12)))),
            (b"#0\n", Ok(Some((b"", 3)))),
            (b"#15hel", Ok(None)),
            (b"#2", Ok(None)),
            (b"#21", Ok(None)),
            (b"#", Ok(None)),
            (b"", Ok(None)),
            (b"#0abc", Ok(None)),
            (b"15hello", Err(BlockError::NoHash(b'1'))),
            (b"#x5hello", Err(BlockError::BadDigitCount(b'x'))),
            (b"#2x5hello", Err(BlockError::BadLength(b'x'))),
            (b"#3x", Err(BlockError::BadLength(b'x'))),
            (
                b"#9999999999",
                Err(BlockError::TooLong {
                    len: 999_999_999,
                    max: MAX,
                }),
            ),
        ];
        for (input, want) in table {
            assert_eq!(
                decode(input, b"\n", MAX),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn encode_then_decode() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1234).collect();
        let block = encode(&data);
        assert!(block.starts_with(b"#41234"));
        let (got, used) = decode(&block, b"\n", MAX).unwrap().unwrap();
        assert_eq!(got, &data[..]);
        assert_eq!(used, block.len());
    }

    proptest! {
        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes, b"\n", 1000);
            let _ = decode(&bytes, b"", 1000);
            let _ = parse_header(&bytes, 0);
        }

        #[test]
        fn round_trips(data in proptest::collection::vec(any::<u8>(), 0..300), extra in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut block = encode(&data);
            let len = block.len();
            block.extend_from_slice(&extra);
            let (got, used) = decode(&block, b"\n", MAX).unwrap().unwrap();
            prop_assert_eq!(got, &data[..]);
            prop_assert_eq!(used, len);
            // Every strict prefix is incomplete, never an error.
            for cut in 0..len {
                prop_assert_eq!(decode(&block[..cut], b"\n", MAX), Ok(None));
            }
        }
    }
}
