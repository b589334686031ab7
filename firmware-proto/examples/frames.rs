//! Print the encoded frame of every message type (the examples in docs/PROTOCOL.md (Device link)).
//!
//! `cargo run -p firmware-proto --example frames`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use firmware_proto::psu::{
    GetState, Identify, Measure, Measurement, Mode, Psu, SetCurrent, SetCurrentEp, SetOutput,
    SetOutputEp, SetVoltage, SetVoltageEp, Telemetry, TelemetryTopic,
};
use firmware_proto::{
    dispatch::Serve, encode_frame, Endpoint, EndpointError, Header, Key, Kind, Topic,
};
use serde::Serialize;

fn show<T: Serialize>(label: &str, h: Header, body: &T) -> anyhow::Result<()> {
    let mut buf = [0u8; 128];
    let raw = postcard::to_slice(&(h, body), &mut [0u8; 128])?.to_vec();
    let frame = encode_frame(&h, body, &mut buf)?;
    println!(
        "{label}\n  key   {}\n  raw   {}\n  frame {}",
        hex::encode(h.key.0),
        hex::encode(&raw),
        hex::encode(frame)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut psu = Psu::new(10_000, "SIM-0001");
    show(
        "identify req",
        Header::new(Kind::Request, 1, Identify::KEY),
        &(),
    )?;
    let id = Serve::<Identify>::serve(&mut psu, ()).map_err(anyhow::Error::from)?;
    show(
        "identify resp",
        Header::new(Kind::Response, 1, Identify::KEY),
        &id,
    )?;
    show(
        "set_voltage req",
        Header::new(Kind::Request, 2, SetVoltageEp::KEY),
        &SetVoltage { mv: 12_000 },
    )?;
    let st = Serve::<SetVoltageEp>::serve(&mut psu, SetVoltage { mv: 12_000 })
        .map_err(anyhow::Error::from)?;
    show(
        "set_voltage resp",
        Header::new(Kind::Response, 2, SetVoltageEp::KEY),
        &st,
    )?;
    show(
        "set_current req",
        Header::new(Kind::Request, 3, SetCurrentEp::KEY),
        &SetCurrent { ma: 1_000 },
    )?;
    show(
        "set_output req",
        Header::new(Kind::Request, 4, SetOutputEp::KEY),
        &SetOutput { on: true },
    )?;
    let st = Serve::<SetOutputEp>::serve(&mut psu, SetOutput { on: true })
        .map_err(anyhow::Error::from)?;
    show(
        "set_output resp",
        Header::new(Kind::Response, 4, SetOutputEp::KEY),
        &st,
    )?;
    show(
        "measure req",
        Header::new(Kind::Request, 5, Measure::KEY),
        &(),
    )?;
    show(
        "measure resp",
        Header::new(Kind::Response, 5, Measure::KEY),
        &Measurement {
            mv: 10_000,
            ma: 1_000,
            mode: Mode::Cc,
        },
    )?;
    show(
        "get_state req",
        Header::new(Kind::Request, 300, GetState::KEY),
        &(),
    )?;
    show(
        "telemetry event",
        Header::new(Kind::Event, 7, TelemetryTopic::KEY),
        &Telemetry {
            uptime_ms: 1500,
            measured: Measurement {
                mv: 10_000,
                ma: 1_000,
                mode: Mode::Cc,
            },
        },
    )?;
    show(
        "error OutOfRange",
        Header::new(Kind::Error, 6, SetVoltageEp::KEY),
        &EndpointError::OutOfRange,
    )?;
    show(
        "error UnknownEndpoint",
        Header::new(Kind::Error, 8, Key([1, 2, 3, 4, 5, 6, 7, 8])),
        &EndpointError::UnknownEndpoint,
    )?;
    show(
        "error UnsupportedVersion",
        Header::new(Kind::Error, 9, Key::ZERO),
        &EndpointError::UnsupportedVersion { supported: 1 },
    )?;
    Ok(())
}
