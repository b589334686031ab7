//! Golden bytes: the encoding of every message type is pinned.
//!
//! The same examples are worked through in docs/PROTOCOL.md (Device link); they were
//! cross-checked against an independent Python CRC-32C + COBS implementation.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use firmware_proto::psu::{
    GetState, Identify, Identity, Measure, Measurement, Mode, SetCurrent, SetCurrentEp, SetOutput,
    SetOutputEp, SetVoltage, SetVoltageEp, State, Telemetry, TelemetryTopic,
};
use firmware_proto::{
    encode_frame, Endpoint, EndpointError, Feed, FrameReader, Header, Key, Kind, Topic, MAX_BODY,
    MAX_FRAME,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Encode, compare with `hex`, decode back and compare with the value.
fn golden<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    header: Header,
    body: &T,
    hex: &str,
) {
    let mut buf = [0u8; MAX_FRAME];
    let frame = encode_frame(&header, body, &mut buf).unwrap();
    assert_eq!(hex::encode(&*frame), hex, "encoding of {body:?}");
    let bytes = hex::decode(hex).unwrap();
    let mut reader = FrameReader::<MAX_FRAME>::new();
    match reader.feed(&bytes) {
        Feed::Frame { frame, remaining } => {
            assert!(remaining.is_empty());
            assert_eq!(frame.header, header);
            assert_eq!(&frame.decode_body::<T>().unwrap(), body);
        }
        other => panic!("golden frame did not decode: {other:?}"),
    }
}

fn key_hex(k: Key) -> String {
    hex::encode(k.0)
}

#[test]
fn endpoint_keys_are_pinned() {
    assert_eq!(key_hex(Identify::KEY), "7ce6b943372326d3");
    assert_eq!(key_hex(SetVoltageEp::KEY), "11d5beeb17202aa3");
    assert_eq!(key_hex(SetCurrentEp::KEY), "0eae60c725dde64d");
    assert_eq!(key_hex(SetOutputEp::KEY), "71219204747b4f84");
    assert_eq!(key_hex(Measure::KEY), "ccc103f435ee69d8");
    assert_eq!(key_hex(GetState::KEY), "4a063509ad3f5e6f");
    assert_eq!(key_hex(TelemetryTopic::KEY), "457a0554499ed63f");
}

fn s(text: &str) -> heapless::String<24> {
    heapless::String::try_from(text).unwrap()
}

fn s16(text: &str) -> heapless::String<16> {
    heapless::String::try_from(text).unwrap()
}

#[test]
fn identify() {
    golden(
        Header::new(Kind::Request, 1, Identify::KEY),
        &(),
        "02010e017ce6b943372326d3e61ee2ad00",
    );
    let id = Identity {
        model: s("labmesh FW-PSU-1"),
        firmware: s16("1.0.0"),
        serial: s16("SIM-0001"),
        protocol: 1,
        max_mv: 30_000,
        max_ma: 3_000,
    };
    golden(
        Header::new(Kind::Response, 1, Identify::KEY),
        &id,
        "360101017ce6b943372326d3106c61626d6573682046572d5053552d3105312e302e30\
         0853494d2d3030303101b0ea01b817cfbc163d00",
    );
}

#[test]
fn set_voltage() {
    golden(
        Header::new(Kind::Request, 2, SetVoltageEp::KEY),
        &SetVoltage { mv: 12_000 },
        "0201100211d5beeb17202aa3e05df2be421700",
    );
    let st = State {
        set_mv: 12_000,
        limit_ma: 1_000,
        output: false,
        measured: Measurement {
            mv: 0,
            ma: 0,
            mode: Mode::Off,
        },
    };
    golden(
        Header::new(Kind::Response, 2, SetVoltageEp::KEY),
        &st,
        "1001010211d5beeb17202aa3e05de8070101010523f6083400",
    );
}

#[test]
fn set_current() {
    golden(
        Header::new(Kind::Request, 3, SetCurrentEp::KEY),
        &SetCurrent { ma: 1_000 },
        "020110030eae60c725dde64de807871df18b00",
    );
}

#[test]
fn set_output() {
    golden(
        Header::new(Kind::Request, 4, SetOutputEp::KEY),
        &SetOutput { on: true },
        "02010f0471219204747b4f8401021f9f4200",
    );
    let st = State {
        set_mv: 12_000,
        limit_ma: 1_000,
        output: true,
        measured: Measurement {
            mv: 10_000,
            ma: 1_000,
            mode: Mode::Cc,
        },
    };
    golden(
        Header::new(Kind::Response, 4, SetOutputEp::KEY),
        &st,
        "1a01010471219204747b4f84e05de80701904ee8070251ca15f300",
    );
}

#[test]
fn measure() {
    golden(
        Header::new(Kind::Request, 5, Measure::KEY),
        &(),
        "02010e05ccc103f435ee69d8f588cc2f00",
    );
    golden(
        Header::new(Kind::Response, 5, Measure::KEY),
        &Measurement {
            mv: 10_000,
            ma: 1_000,
            mode: Mode::Cc,
        },
        "15010105ccc103f435ee69d8904ee80702380e2c9700",
    );
}

#[test]
fn get_state_with_a_two_byte_seq() {
    golden(
        Header::new(Kind::Request, 300, GetState::KEY),
        &(),
        "02010fac024a063509ad3f5e6f0dd07caf00",
    );
}

#[test]
fn telemetry_event() {
    golden(
        Header::new(Kind::Event, 7, TelemetryTopic::KEY),
        &Telemetry {
            uptime_ms: 1500,
            measured: Measurement {
                mv: 10_000,
                ma: 1_000,
                mode: Mode::Cc,
            },
        },
        "17010207457a0554499ed63fdc0b904ee807023e0e5aa700",
    );
}

#[test]
fn every_wire_error() {
    let key = SetVoltageEp::KEY;
    let table = [
        (
            EndpointError::UnknownEndpoint,
            "0c01030611d5beeb17202aa305f677622f00",
        ),
        (
            EndpointError::BadRequest,
            "1101030611d5beeb17202aa301f5f409dd00",
        ),
        (EndpointError::Busy, "1101030611d5beeb17202aa302010759ce00"),
        (
            EndpointError::OutOfRange,
            "1101030611d5beeb17202aa3030284323c00",
        ),
        (
            EndpointError::UnsupportedVersion { supported: 1 },
            "1201030611d5beeb17202aa30401645b7c3b00",
        ),
        (
            EndpointError::ResponseTooLarge,
            "1101030611d5beeb17202aa305ea63931a00",
        ),
        (
            EndpointError::InvalidState,
            "1101030611d5beeb17202aa3061e90c30900",
        ),
    ];
    for (err, hex) in table {
        golden(Header::new(Kind::Error, 6, key), &err, hex);
    }
}

#[test]
fn unsupported_version_answer_uses_key_zero() {
    golden(
        Header::new(Kind::Error, 9, Key::ZERO),
        &EndpointError::UnsupportedVersion { supported: 1 },
        "04010309010101010101010704010391b55800",
    );
}

#[test]
fn worst_case_bodies_fit_max_body() {
    let id = Identity {
        model: s(&"M".repeat(24)),
        firmware: s16(&"F".repeat(16)),
        serial: s16(&"S".repeat(16)),
        protocol: u8::MAX,
        max_mv: u32::MAX,
        max_ma: u32::MAX,
    };
    let st = State {
        set_mv: u32::MAX,
        limit_ma: u32::MAX,
        output: true,
        measured: Measurement {
            mv: u32::MAX,
            ma: u32::MAX,
            mode: Mode::Cc,
        },
    };
    let tel = Telemetry {
        uptime_ms: u32::MAX,
        measured: st.measured,
    };
    let sizes = [
        postcard::to_allocvec(&id).unwrap().len(),
        postcard::to_allocvec(&st).unwrap().len(),
        postcard::to_allocvec(&tel).unwrap().len(),
        postcard::to_allocvec(&EndpointError::UnsupportedVersion { supported: 255 })
            .unwrap()
            .len(),
    ];
    for n in sizes {
        assert!(n <= MAX_BODY, "{n} > {MAX_BODY}");
    }
    // And the biggest frame with the biggest header fits MAX_FRAME.
    let mut buf = [0u8; MAX_FRAME];
    let h = Header::new(Kind::Response, u32::MAX, Key([0xff; 8]));
    assert!(encode_frame(&h, &id, &mut buf).is_ok());
}
