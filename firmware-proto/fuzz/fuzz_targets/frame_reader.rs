//! Any bytes, in a chunking chosen by the input, through the frame reader.
//! Oracle: it never panics, and every frame it accepts re-encodes to bytes that
//! a fresh reader decodes to the same header and body.
#![no_main]

use firmware_proto::{encode_frame, Feed, FrameReader, Header, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

/// Serialises body bytes verbatim (no length prefix).
struct Raw<'a>(&'a [u8]);
impl serde::Serialize for Raw<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(self.0.len())?;
        for b in self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

fn roundtrip(header: Header, body: &[u8]) {
    let mut buf = [0u8; MAX_FRAME];
    let bytes = encode_frame(&header, &Raw(body), &mut buf).expect("accepted frame re-encodes");
    let mut fresh = FrameReader::<MAX_FRAME>::new();
    match fresh.feed(bytes) {
        Feed::Frame { frame, remaining } => {
            assert!(remaining.is_empty());
            assert_eq!(frame.header, header);
            assert_eq!(frame.body, body);
        }
        other => panic!("re-encoded frame rejected: {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut reader = FrameReader::<MAX_FRAME>::new();
    for piece in bytes.chunks(chunk) {
        let mut window = piece;
        loop {
            window = match reader.feed(window) {
                Feed::NeedMore => break,
                Feed::FrameTooLarge { remaining } | Feed::BadFrame { remaining, .. } => remaining,
                Feed::Frame { frame, remaining } => {
                    roundtrip(frame.header, frame.body);
                    remaining
                }
            };
        }
    }
});
