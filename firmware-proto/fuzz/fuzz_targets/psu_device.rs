//! Any bytes into the whole PSU firmware (reader + dispatcher + handlers).
//! Oracle: no panic, and every answer is one well-formed frame.
#![no_main]

use firmware_proto::psu::{PsuFirmware, DEFAULT_LOAD_MOHM};
use firmware_proto::{Feed, FrameReader, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut fw = PsuFirmware::new(DEFAULT_LOAD_MOHM, "FUZZ");
    fw.receive(data, |answer| {
        assert!(answer.len() <= MAX_FRAME);
        let mut r = FrameReader::<MAX_FRAME>::new();
        assert!(matches!(r.feed(answer), Feed::Frame { remaining: [], .. }));
    });
    fw.telemetry(0, |event| assert!(event.len() <= MAX_FRAME));
});
