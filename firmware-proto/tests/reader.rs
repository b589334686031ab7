//! Receive side: any input, any chunking, never panics; valid frames survive garbage.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use firmware_proto::frame::parse_frame;
use firmware_proto::psu::{Measurement, Mode, State};
use firmware_proto::{encode_frame, BadFrame, Feed, FrameReader, Header, Key, Kind, MAX_FRAME};
use proptest::prelude::*;

/// Everything one `feed` loop produced.
#[derive(Debug, Default)]
struct Outcomes {
    frames: Vec<(Header, Vec<u8>)>,
    bad: Vec<BadFrame>,
    too_large: usize,
}

fn feed_chunked(reader: &mut FrameReader, bytes: &[u8], chunks: &[usize]) -> Outcomes {
    let mut out = Outcomes::default();
    let mut rest = bytes;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = sizes.next().copied().unwrap_or(1).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let mut window = chunk;
        // Each step consumes at least one byte, so this loop ends.
        for _ in 0..=chunk.len() {
            window = match reader.feed(window) {
                Feed::NeedMore => break,
                Feed::FrameTooLarge { remaining } => {
                    out.too_large += 1;
                    remaining
                }
                Feed::BadFrame { reason, remaining } => {
                    out.bad.push(reason);
                    remaining
                }
                Feed::Frame { frame, remaining } => {
                    out.frames.push((frame.header, frame.body.to_vec()));
                    remaining
                }
            };
        }
    }
    out
}

fn encode(h: &Header, s: &State) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME];
    encode_frame(h, s, &mut buf).map(|f| f.to_vec()).unwrap()
}

fn state(n: u32) -> State {
    State {
        set_mv: n,
        limit_ma: 1000,
        output: true,
        measured: Measurement {
            mv: n,
            ma: 5,
            mode: Mode::Cv,
        },
    }
}

fn arb_state() -> impl Strategy<Value = State> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<bool>(),
        any::<u32>(),
        any::<u32>(),
        0..3u8,
    )
        .prop_map(|(set_mv, limit_ma, output, mv, ma, m)| State {
            set_mv,
            limit_ma,
            output,
            measured: Measurement {
                mv,
                ma,
                mode: match m {
                    0 => Mode::Off,
                    1 => Mode::Cv,
                    _ => Mode::Cc,
                },
            },
        })
}

fn arb_header() -> impl Strategy<Value = Header> {
    (0..4u8, any::<u32>(), any::<[u8; 8]>()).prop_map(|(k, seq, key)| {
        let kind = match k {
            0 => Kind::Request,
            1 => Kind::Response,
            2 => Kind::Event,
            _ => Kind::Error,
        };
        Header::new(kind, seq, Key(key))
    })
}

/// `needle` appears in order inside `hay`.
fn is_subsequence<T: PartialEq>(needle: &[T], hay: &[T]) -> bool {
    let mut it = hay.iter();
    needle.iter().all(|n| it.any(|h| h == n))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_bytes_in_any_chunking_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..3000),
        chunks in proptest::collection::vec(1usize..200, 1..16),
    ) {
        let mut reader = FrameReader::<MAX_FRAME>::new();
        let out = feed_chunked(&mut reader, &bytes, &chunks);
        // Whatever came out passed the CRC: re-encoding gives a frame that parses.
        for (h, body) in &out.frames {
            prop_assert_eq!(h.version, firmware_proto::PROTOCOL_VERSION);
            prop_assert!(body.len() < MAX_FRAME);
        }
    }

    #[test]
    fn valid_frames_embedded_in_garbage_are_recovered(
        items in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..300), arb_header(), arb_state()),
            1..8,
        ),
        chunks in proptest::collection::vec(1usize..100, 1..16),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (garbage, h, s) in &items {
            stream.extend_from_slice(garbage);
            // The delimiter that ends the garbage (senders may always prepend one).
            stream.push(0);
            stream.extend_from_slice(&encode(h, s));
            expected.push((*h, postcard::to_allocvec(s).unwrap()));
        }
        let mut reader = FrameReader::<MAX_FRAME>::new();
        let out = feed_chunked(&mut reader, &stream, &chunks);
        prop_assert!(is_subsequence(&expected, &out.frames), "{:?} not in {:?}", expected, out.frames);
    }

    #[test]
    fn a_single_flipped_bit_is_never_accepted(
        h in arb_header(), s in arb_state(), pos in any::<prop::sample::Index>(), bit in 0..8u8,
    ) {
        let mut frame = encode(&h, &s);
        let body_len = frame.len() - 1; // keep the delimiter
        let i = pos.index(body_len);
        frame[i] ^= 1 << bit;
        let mut reader = FrameReader::<MAX_FRAME>::new();
        let out = feed_chunked(&mut reader, &frame, &[frame.len()]);
        // A flip may create a 0x00 (splitting the frame) or break COBS or the CRC;
        // it never yields the frame (or any frame).
        prop_assert!(out.frames.is_empty(), "accepted {:?}", out.frames);
    }
}

#[test]
fn back_to_back_frames_in_one_chunk() {
    let a = encode(&Header::new(Kind::Response, 1, Key([1; 8])), &state(1));
    let b = encode(&Header::new(Kind::Event, 2, Key([2; 8])), &state(2));
    let stream = [a.as_slice(), b.as_slice()].concat();
    let mut reader = FrameReader::<MAX_FRAME>::new();
    let out = feed_chunked(&mut reader, &stream, &[stream.len()]);
    assert_eq!(out.frames.len(), 2);
    assert_eq!(out.frames[0].0.seq, 1);
    assert_eq!(out.frames[1].0.seq, 2);
}

#[test]
fn oversize_run_is_reported_once_and_the_next_frame_survives() {
    let mut stream = vec![0x55u8; 3 * MAX_FRAME];
    stream.push(0);
    let good = encode(&Header::new(Kind::Response, 9, Key([9; 8])), &state(9));
    stream.extend_from_slice(&good);
    for chunk in [1usize, 7, 64, 1000] {
        let mut reader = FrameReader::<MAX_FRAME>::new();
        let out = feed_chunked(&mut reader, &stream, &[chunk]);
        assert_eq!(out.too_large, 1, "chunk {chunk}");
        assert!(out.bad.is_empty(), "chunk {chunk}: {:?}", out.bad);
        assert_eq!(out.frames.len(), 1, "chunk {chunk}");
        assert_eq!(out.frames[0].0.seq, 9);
    }
}

#[test]
fn corrupted_crc_is_reported_as_crc() {
    let mut f = encode(&Header::new(Kind::Response, 3, Key([3; 8])), &state(3));
    // Byte 1 is inside the COBS block after the code byte; flip a bit that stays non-zero.
    f[5] ^= 0x01;
    assert_ne!(f[5], 0);
    let mut reader = FrameReader::<MAX_FRAME>::new();
    let out = feed_chunked(&mut reader, &f, &[f.len()]);
    assert!(out.frames.is_empty());
    assert!(
        matches!(out.bad.as_slice(), [BadFrame::Crc] | [BadFrame::Cobs]),
        "{:?}",
        out.bad
    );
}

#[test]
fn other_protocol_version_is_detected_with_its_seq() {
    // A version-2 frame: same stable prefix (version, kind, seq), valid CRC.
    let mut h = Header::new(Kind::Request, 77, Key([4; 8]));
    h.version = 2;
    let f = encode(&h, &state(4));
    let mut reader = FrameReader::<MAX_FRAME>::new();
    let out = feed_chunked(&mut reader, &f, &[3]);
    assert_eq!(
        out.bad,
        vec![BadFrame::Version {
            got: 2,
            seq: Some(77)
        }]
    );
}

#[test]
fn lone_delimiters_are_ignored() {
    let f = encode(&Header::new(Kind::Event, 5, Key([5; 8])), &state(5));
    let stream = [&[0u8, 0, 0][..], &f, &[0, 0]].concat();
    let mut reader = FrameReader::<MAX_FRAME>::new();
    let out = feed_chunked(&mut reader, &stream, &[1]);
    assert_eq!(out.frames.len(), 1);
    assert!(out.bad.is_empty());
    assert_eq!(out.too_large, 0);
}

#[test]
fn short_frames_are_truncated_not_panics() {
    for raw in [&[][..], &[1u8][..], &[1, 2, 3, 4][..]] {
        assert_eq!(parse_frame(raw), Err(BadFrame::Truncated));
    }
}
