//! A single-channel bench power supply as microcontroller firmware (no_std).
//!
//! Integer units throughout (millivolts, milliamps, milliohms) so the model is
//! exact and needs no float formatting on the device. The load is a resistor:
//! in constant-voltage mode `I = V / R`; when `V / R` exceeds the current limit
//! the supply goes constant-current, `I = limit` and `V = limit * R`.

use serde::{Deserialize, Serialize};

use crate::dispatch::{Device, Route, Serve};
use crate::error::EndpointError;
use crate::key::{Endpoint, Topic};

/// Highest voltage setpoint, mV.
pub const MAX_MV: u32 = 30_000;
/// Highest current limit, mA.
pub const MAX_MA: u32 = 3_000;
/// Largest load the model accepts, mΩ (1 kΩ); larger values are clamped.
pub const MAX_LOAD_MOHM: u32 = 1_000_000;
/// Load of the simulated device, mΩ (10 Ω).
pub const DEFAULT_LOAD_MOHM: u32 = 10_000;

/// Model name returned by `identify`.
pub const MODEL: &str = "labmesh FW-PSU-1";
/// Firmware version returned by `identify`.
pub const FIRMWARE: &str = "1.0.0";

/// Regulation mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Output off.
    Off,
    /// Constant voltage.
    Cv,
    /// Constant current (current limit reached).
    Cc,
}

/// `identify` response.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Model name.
    pub model: heapless::String<24>,
    /// Firmware version.
    pub firmware: heapless::String<16>,
    /// Serial number.
    pub serial: heapless::String<16>,
    /// Protocol version spoken.
    pub protocol: u8,
    /// Highest setpoint, mV.
    pub max_mv: u32,
    /// Highest current limit, mA.
    pub max_ma: u32,
}

/// `set_voltage` request.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetVoltage {
    /// Setpoint, mV (0..=30000).
    pub mv: u32,
}

/// `set_current` request.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetCurrent {
    /// Current limit, mA (0..=3000).
    pub ma: u32,
}

/// `set_output` request.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetOutput {
    /// Output on.
    pub on: bool,
}

/// `measure` response: what the output terminals see.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measurement {
    /// Output voltage, mV.
    pub mv: u32,
    /// Output current, mA.
    pub ma: u32,
    /// Regulation mode.
    pub mode: Mode,
}

/// `get_state` response (and the answer to every setter).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    /// Voltage setpoint, mV.
    pub set_mv: u32,
    /// Current limit, mA.
    pub limit_ma: u32,
    /// Output enabled.
    pub output: bool,
    /// Present measurement.
    pub measured: Measurement,
}

/// Telemetry event body.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Telemetry {
    /// Milliseconds since the device started (wraps).
    pub uptime_ms: u32,
    /// Present measurement.
    pub measured: Measurement,
}

macro_rules! endpoint {
    ($(#[$m:meta])* $ty:ident, $name:literal, $req:ty, $resp:ty, $schema:expr) => {
        $(#[$m])*
        pub struct $ty;
        impl Endpoint for $ty {
            type Request = $req;
            type Response = $resp;
            const NAME: &'static str = $name;
            const SCHEMA: &'static str = $schema;
        }
    };
}

// Schema strings spell out every field, so any layout change changes the keys.
macro_rules! measurement_schema {
    () => {
        "Measurement{mv:u32,ma:u32,mode:Mode{Off,Cv,Cc}}"
    };
}
macro_rules! state_schema {
    () => {
        concat!(
            "State{set_mv:u32,limit_ma:u32,output:bool,measured:",
            measurement_schema!(),
            "}"
        )
    };
}

endpoint!(
    /// Who are you: model, firmware, serial, limits.
    Identify, "identify", (), Identity,
    "()->Identity{model:String<24>,firmware:String<16>,serial:String<16>,protocol:u8,max_mv:u32,max_ma:u32}"
);
endpoint!(
    /// Set the voltage setpoint.
    SetVoltageEp, "set_voltage", SetVoltage, State,
    concat!("SetVoltage{mv:u32}->", state_schema!())
);
endpoint!(
    /// Set the current limit.
    SetCurrentEp, "set_current", SetCurrent, State,
    concat!("SetCurrent{ma:u32}->", state_schema!())
);
endpoint!(
    /// Switch the output.
    SetOutputEp, "set_output", SetOutput, State,
    concat!("SetOutput{on:bool}->", state_schema!())
);
endpoint!(
    /// Read the output.
    Measure, "measure", (), Measurement,
    concat!("()->", measurement_schema!())
);
endpoint!(
    /// Read setpoints and measurement.
    GetState, "get_state", (), State,
    concat!("()->", state_schema!())
);

/// Periodic telemetry topic.
pub struct TelemetryTopic;
impl Topic for TelemetryTopic {
    type Message = Telemetry;
    const NAME: &'static str = "telemetry";
    const SCHEMA: &'static str = concat!(
        "Telemetry{uptime_ms:u32,measured:",
        measurement_schema!(),
        "}"
    );
}

/// Names of every endpoint the PSU serves, in routing order.
pub const ENDPOINT_NAMES: [&str; 6] = [
    Identify::NAME,
    SetVoltageEp::NAME,
    SetCurrentEp::NAME,
    SetOutputEp::NAME,
    Measure::NAME,
    GetState::NAME,
];

/// The PSU channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Psu {
    set_mv: u32,
    limit_ma: u32,
    output: bool,
    load_mohm: u32,
    serial: heapless::String<16>,
}

impl Psu {
    /// Output off, 0 V, 1 A limit, driving `load_mohm`, clamped to
    /// `1..=MAX_LOAD_MOHM` (0 is treated as a 1 mΩ short).
    pub fn new(load_mohm: u32, serial: &str) -> Self {
        let mut s = heapless::String::new();
        for c in serial.chars() {
            if s.push(c).is_err() {
                break;
            }
        }
        Psu {
            set_mv: 0,
            limit_ma: 1_000,
            output: false,
            load_mohm: load_mohm.clamp(1, MAX_LOAD_MOHM),
            serial: s,
        }
    }

    /// What the terminals see now.
    pub fn measure(&self) -> Measurement {
        if !self.output {
            return Measurement {
                mv: 0,
                ma: 0,
                mode: Mode::Off,
            };
        }
        // u32 arithmetic (no 64-bit division on a Cortex-M4): set_mv <= 30_000,
        // limit_ma <= 3_000 and load_mohm <= MAX_LOAD_MOHM keep every product in range.
        let r = self.load_mohm;
        let cv_ma = self.set_mv.saturating_mul(1000) / r;
        if cv_ma > self.limit_ma {
            let cc_mv = self.limit_ma.saturating_mul(r) / 1000;
            Measurement {
                mv: cc_mv.min(self.set_mv),
                ma: self.limit_ma,
                mode: Mode::Cc,
            }
        } else {
            Measurement {
                mv: self.set_mv,
                ma: cv_ma,
                mode: Mode::Cv,
            }
        }
    }

    /// Setpoints plus measurement.
    pub fn state(&self) -> State {
        State {
            set_mv: self.set_mv,
            limit_ma: self.limit_ma,
            output: self.output,
            measured: self.measure(),
        }
    }

    /// Telemetry body at `uptime_ms`.
    pub fn telemetry(&self, uptime_ms: u32) -> Telemetry {
        Telemetry {
            uptime_ms,
            measured: self.measure(),
        }
    }
}

impl Serve<Identify> for Psu {
    fn serve(&mut self, _: ()) -> Result<Identity, EndpointError> {
        let mut id = Identity {
            model: heapless::String::new(),
            firmware: heapless::String::new(),
            serial: self.serial.clone(),
            protocol: crate::PROTOCOL_VERSION,
            max_mv: MAX_MV,
            max_ma: MAX_MA,
        };
        id.model
            .push_str(MODEL)
            .map_err(|_| EndpointError::ResponseTooLarge)?;
        id.firmware
            .push_str(FIRMWARE)
            .map_err(|_| EndpointError::ResponseTooLarge)?;
        Ok(id)
    }
}

impl Serve<SetVoltageEp> for Psu {
    fn serve(&mut self, req: SetVoltage) -> Result<State, EndpointError> {
        if req.mv > MAX_MV {
            return Err(EndpointError::OutOfRange);
        }
        self.set_mv = req.mv;
        Ok(self.state())
    }
}

impl Serve<SetCurrentEp> for Psu {
    fn serve(&mut self, req: SetCurrent) -> Result<State, EndpointError> {
        if req.ma > MAX_MA {
            return Err(EndpointError::OutOfRange);
        }
        self.limit_ma = req.ma;
        Ok(self.state())
    }
}

impl Serve<SetOutputEp> for Psu {
    fn serve(&mut self, req: SetOutput) -> Result<State, EndpointError> {
        self.output = req.on;
        Ok(self.state())
    }
}

impl Serve<Measure> for Psu {
    fn serve(&mut self, _: ()) -> Result<Measurement, EndpointError> {
        Ok(self.measure())
    }
}

impl Serve<GetState> for Psu {
    fn serve(&mut self, _: ()) -> Result<State, EndpointError> {
        Ok(self.state())
    }
}

/// The PSU's routing table.
pub static ROUTES: [Route<Psu>; 6] = [
    Route::of::<Identify>(),
    Route::of::<SetVoltageEp>(),
    Route::of::<SetCurrentEp>(),
    Route::of::<SetOutputEp>(),
    Route::of::<Measure>(),
    Route::of::<GetState>(),
];

/// The whole firmware: PSU model + link. Drive it with received bytes and a clock.
pub struct PsuFirmware {
    /// The channel.
    pub psu: Psu,
    /// The link endpoint.
    pub device: Device<'static, Psu>,
    event_seq: u32,
}

impl PsuFirmware {
    /// Firmware driving `load_mohm` with serial number `serial`.
    pub fn new(load_mohm: u32, serial: &str) -> Self {
        PsuFirmware {
            psu: Psu::new(load_mohm, serial),
            device: Device::new(&ROUTES),
            event_seq: 0,
        }
    }

    /// Bytes from the host; `emit` gets each answer frame.
    pub fn receive(&mut self, input: &[u8], emit: impl FnMut(&[u8])) {
        self.device.receive(&mut self.psu, input, emit);
    }

    /// Emit one telemetry event frame.
    pub fn telemetry(&mut self, uptime_ms: u32, emit: impl FnMut(&[u8])) {
        let body = self.psu.telemetry(uptime_ms);
        let seq = self.event_seq;
        self.event_seq = self.event_seq.wrapping_add(1);
        // A Telemetry body is at most 21 bytes: it always fits a frame.
        let _ = self
            .device
            .emit_event(TelemetryTopic::KEY, seq, &body, emit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(mv: u32, ma: u32, load: u32) -> Measurement {
        let mut p = Psu::new(load, "T");
        p.set_mv = mv;
        p.limit_ma = ma;
        p.output = true;
        p.measure()
    }

    #[test]
    fn resistive_load_cv_and_cc() {
        assert_eq!(
            on(5_000, 1_000, 10_000),
            Measurement {
                mv: 5_000,
                ma: 500,
                mode: Mode::Cv
            }
        );
        assert_eq!(
            on(12_000, 1_000, 10_000),
            Measurement {
                mv: 10_000,
                ma: 1_000,
                mode: Mode::Cc
            }
        );
        // A short: the limit flows at (almost) zero volts.
        assert_eq!(
            on(30_000, 3_000, 0),
            Measurement {
                mv: 3,
                ma: 3_000,
                mode: Mode::Cc
            }
        );
        // Extreme corners do not overflow.
        assert_eq!(on(MAX_MV, MAX_MA, u32::MAX).mode, Mode::Cv);
        assert_eq!(
            on(MAX_MV, 0, MAX_LOAD_MOHM),
            Measurement {
                mv: 0,
                ma: 0,
                mode: Mode::Cc
            }
        );
    }

    #[test]
    fn limits_are_enforced() {
        let mut p = Psu::new(DEFAULT_LOAD_MOHM, "T");
        assert_eq!(
            Serve::<SetVoltageEp>::serve(&mut p, SetVoltage { mv: MAX_MV + 1 }),
            Err(EndpointError::OutOfRange)
        );
        assert_eq!(
            Serve::<SetCurrentEp>::serve(&mut p, SetCurrent { ma: MAX_MA + 1 }),
            Err(EndpointError::OutOfRange)
        );
        assert!(Serve::<SetVoltageEp>::serve(&mut p, SetVoltage { mv: MAX_MV }).is_ok());
        assert_eq!(p.measure().mode, Mode::Off);
    }
}
