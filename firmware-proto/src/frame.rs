//! Frames: `COBS(postcard(header) ++ postcard(body) ++ crc32c_le) ++ 0x00`.
//!
//! Encoding uses postcard's own flavors (`CrcModifier` over `Cobs` over `Slice`);
//! decoding uses postcard's [`CobsAccumulator`] for delimiting and COBS, then the
//! CRC-32/ISCSI is checked over the decoded bytes before anything is trusted.
//! The byte-exact format is in `docs/PROTOCOL.md (Device link)`.

use core::fmt;

use crc::{Crc, CRC_32_ISCSI};
use postcard::accumulator::{CobsAccumulator, FeedResult};
use postcard::ser_flavors::{crc::CrcModifier, Cobs, Slice};
use serde::de::{DeserializeOwned, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::key::Key;

/// Protocol version carried in byte 0 of every decoded frame.
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest encoded header: version (1) + kind (1) + seq varint (5) + key (8).
pub const MAX_HEADER: usize = 15;
/// Largest body any message of this crate encodes to (checked by tests).
pub const MAX_BODY: usize = 96;
/// CRC trailer length.
pub const CRC_LEN: usize = 4;
/// Largest frame on the wire, COBS overhead and the 0x00 delimiter included.
///
/// Receivers drop anything longer (as [`Feed::FrameTooLarge`]).
pub const MAX_FRAME: usize = 128;

const MAX_RAW: usize = MAX_HEADER + MAX_BODY + CRC_LEN;
// COBS adds one byte per started 254-byte block; plus the delimiter.
const _: () = assert!(MAX_RAW + MAX_RAW / 254 + 2 <= MAX_FRAME);

/// The CRC used by the link: CRC-32/ISCSI (Castagnoli), appended little-endian.
pub static CRC: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// What a frame is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Host -> device call.
    Request,
    /// Device -> host successful answer (same seq and key as the request).
    Response,
    /// Device -> host unsolicited message (seq counts events).
    Event,
    /// Device -> host failure; the body is a [`crate::EndpointError`].
    Error,
}

/// Frame header (postcard: u8, varint tag, varint u32, 8 raw bytes).
///
/// `version`, `kind` and `seq` keep their positions in every future version,
/// so a device can answer a frame of another version with the right seq.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// [`PROTOCOL_VERSION`].
    pub version: u8,
    /// Request, response, event or error.
    pub kind: Kind,
    /// Request id (echoed in the answer) or event counter.
    pub seq: u32,
    /// Endpoint or topic key.
    pub key: Key,
}

impl Header {
    /// A header of the current protocol version.
    pub const fn new(kind: Kind, seq: u32, key: Key) -> Self {
        Header {
            version: PROTOCOL_VERSION,
            kind,
            seq,
            key,
        }
    }
}

/// Why a frame could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The output buffer is too small for the frame.
    #[error("output buffer too small for the frame")]
    BufferFull,
    /// The body could not be serialised (should not happen with this crate's types).
    #[error("body not serialisable: {0}")]
    Serialize(postcard::Error),
}

impl From<postcard::Error> for EncodeError {
    fn from(e: postcard::Error) -> Self {
        match e {
            postcard::Error::SerializeBufferFull => EncodeError::BufferFull,
            other => EncodeError::Serialize(other),
        }
    }
}

/// Encode one frame into `buf`; returns the written bytes (ending in 0x00).
pub fn encode_frame<'b, T: Serialize + ?Sized>(
    header: &Header,
    body: &T,
    buf: &'b mut [u8],
) -> Result<&'b mut [u8], EncodeError> {
    let cobs = Cobs::try_new(Slice::new(buf))?;
    let flavor = CrcModifier::new(cobs, CRC.digest());
    Ok(postcard::serialize_with_flavor(&(header, body), flavor)?)
}

/// Encode one frame into a new `Vec`.
#[cfg(feature = "alloc")]
pub fn encode_frame_vec<T: Serialize + ?Sized>(
    header: &Header,
    body: &T,
) -> Result<alloc::vec::Vec<u8>, EncodeError> {
    let mut buf = [0u8; MAX_FRAME];
    let used = encode_frame(header, body, &mut buf)?;
    Ok(used.to_vec())
}

/// Why a delimited frame was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadFrame {
    /// Not valid COBS.
    Cobs,
    /// Shorter than a header plus CRC.
    Truncated,
    /// CRC mismatch (line noise).
    Crc,
    /// Valid CRC but another protocol version; `seq` if the stable prefix decoded.
    Version {
        /// Version byte received.
        got: u8,
        /// The frame's seq, read from the stable prefix.
        seq: Option<u32>,
    },
    /// Valid CRC and version but the header did not decode.
    Header,
}

impl fmt::Display for BadFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadFrame::Cobs => f.write_str("invalid COBS encoding"),
            BadFrame::Truncated => f.write_str("frame too short"),
            BadFrame::Crc => f.write_str("CRC mismatch"),
            BadFrame::Version { got, .. } => {
                write!(f, "protocol version {got}, expected {PROTOCOL_VERSION}")
            }
            BadFrame::Header => f.write_str("undecodable header"),
        }
    }
}

/// A received, CRC-checked frame; the body is still encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Decoded header.
    pub header: Header,
    /// Postcard-encoded body (CRC already stripped).
    pub body: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Decode the body as `T`; trailing bytes are an error (schema mismatch).
    pub fn decode_body<T: DeserializeOwned>(&self) -> Result<T, postcard::Error> {
        decode_exact(self.body)
    }
}

/// Decode `T` from `bytes`, rejecting trailing bytes.
pub fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    let (value, rest) = postcard::take_from_bytes::<T>(bytes)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(postcard::Error::DeserializeBadEncoding)
    }
}

/// Check CRC, version and header of a COBS-decoded frame.
pub fn parse_frame(raw: &[u8]) -> Result<Frame<'_>, BadFrame> {
    if raw.len() < CRC_LEN + 1 {
        return Err(BadFrame::Truncated);
    }
    let (data, crc) = raw.split_at(raw.len() - CRC_LEN);
    let mut crc_le = [0u8; CRC_LEN];
    crc_le.copy_from_slice(crc);
    if CRC.checksum(data) != u32::from_le_bytes(crc_le) {
        return Err(BadFrame::Crc);
    }
    match data.first() {
        Some(&PROTOCOL_VERSION) => {}
        Some(&got) => {
            let seq = postcard::take_from_bytes::<(u8, u32, u32)>(data)
                .ok()
                .map(|((_, _, seq), _)| seq);
            return Err(BadFrame::Version { got, seq });
        }
        None => return Err(BadFrame::Truncated),
    }
    let (header, body) = postcard::take_from_bytes::<Header>(data).map_err(|_| BadFrame::Header)?;
    Ok(Frame { header, body })
}

/// The COBS-decoded bytes of one frame, pulled out of [`CobsAccumulator`].
///
/// `CobsAccumulator::feed` decodes COBS and then deserialises a `T` from the
/// decoded bytes; the CRC has to be checked over those raw bytes, so this `T`
/// is "all remaining bytes": a tuple read byte by byte until postcard reports
/// the end of the input.
struct RawFrame<const N: usize>(heapless::Vec<u8, N>);

impl<'de, const N: usize> Deserialize<'de> for RawFrame<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes<const N: usize>;
        impl<'de, const N: usize> Visitor<'de> for Bytes<N> {
            type Value = RawFrame<N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("frame bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = heapless::Vec::new();
                // The only error postcard reports here is "no more input": the end.
                while let Ok(Some(b)) = seq.next_element::<u8>() {
                    out.push(b)
                        .map_err(|_| serde::de::Error::custom("frame overflow"))?;
                }
                Ok(RawFrame(out))
            }
        }
        d.deserialize_tuple(usize::MAX, Bytes::<N>)
    }
}

/// Outcome of [`FrameReader::feed`].
#[derive(Debug, PartialEq, Eq)]
pub enum Feed<'r, 'i> {
    /// All input consumed, no complete frame yet.
    NeedMore,
    /// A frame exceeded the buffer; bytes up to the next 0x00 are dropped.
    FrameTooLarge {
        /// Unconsumed input: feed it again.
        remaining: &'i [u8],
    },
    /// A delimited frame was rejected.
    BadFrame {
        /// Why.
        reason: BadFrame,
        /// Unconsumed input: feed it again.
        remaining: &'i [u8],
    },
    /// A good frame.
    Frame {
        /// The frame (borrows the reader until the next feed).
        frame: Frame<'r>,
        /// Unconsumed input: feed it again.
        remaining: &'i [u8],
    },
}

/// Receive side: turns any byte stream, in any chunking, into frames.
///
/// Never panics; after garbage, an oversize run or a bad frame it resumes at
/// the next 0x00. Empty frames (a lone 0x00, which senders may use to flush
/// line noise) are skipped silently. Uses `2 * N` bytes of RAM.
pub struct FrameReader<const N: usize = MAX_FRAME> {
    acc: CobsAccumulator<N>,
    last: heapless::Vec<u8, N>,
    pending: usize,
    discarding: bool,
}

impl<const N: usize> Default for FrameReader<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameReader<N> {
    /// An empty reader.
    pub const fn new() -> Self {
        FrameReader {
            acc: CobsAccumulator::new(),
            last: heapless::Vec::new(),
            pending: 0,
            discarding: false,
        }
    }

    /// Forget any partial frame (e.g. after a link reset).
    pub fn reset(&mut self) {
        self.acc = CobsAccumulator::new();
        self.pending = 0;
        self.discarding = false;
    }

    /// Feed bytes; call again with `remaining` until [`Feed::NeedMore`].
    pub fn feed<'r, 'i>(&'r mut self, mut input: &'i [u8]) -> Feed<'r, 'i> {
        loop {
            if self.discarding {
                match input.iter().position(|&b| b == 0) {
                    None => return Feed::NeedMore,
                    Some(p) => {
                        self.discarding = false;
                        input = input.get(p + 1..).unwrap_or(&[]);
                    }
                }
            }
            match input.split_first() {
                None => return Feed::NeedMore,
                Some((0, rest)) if self.pending == 0 => {
                    input = rest;
                    continue;
                }
                Some(_) => {}
            }
            let has_zero = input.contains(&0);
            match self.acc.feed::<RawFrame<N>>(input) {
                FeedResult::Consumed => {
                    self.pending += input.len();
                    return Feed::NeedMore;
                }
                FeedResult::OverFull(remaining) => {
                    self.pending = 0;
                    // Without a delimiter in this chunk, `remaining` is the middle of
                    // the oversize frame: drop through the next 0x00.
                    self.discarding = !has_zero;
                    return Feed::FrameTooLarge { remaining };
                }
                FeedResult::DeserError(remaining) => {
                    self.pending = 0;
                    return Feed::BadFrame {
                        reason: BadFrame::Cobs,
                        remaining,
                    };
                }
                FeedResult::Success { data, remaining } => {
                    self.pending = 0;
                    self.last = data.0;
                    return match parse_frame(&self.last) {
                        Ok(frame) => Feed::Frame { frame, remaining },
                        Err(reason) => Feed::BadFrame { reason, remaining },
                    };
                }
            }
        }
    }
}
