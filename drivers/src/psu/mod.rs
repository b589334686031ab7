//! Power supplies: model limits and the family drivers
//! (`keysight-e36xx`, `rigol-dp8xx`, `siglent-spd3303x`).
//!
//! Every family offers the same methods: `set_voltage(value, channel=1)`,
//! `set_current(value, channel=1)`, `set_output(on, channel=1)`,
//! `measure_voltage(channel=1)`, `measure_current(channel=1)`, `get_state()`,
//! `identify()` ([`PsuMethod`], one table for `describe()` and `call()`).
//! Only the SCPI sent differs ([`Family`]).

pub mod models;

use serde_json::{json, Value};

use self::models::{ChannelLimits, Family, PsuModel};
use crate::options::{self, OptionSpec, OptionType};
use crate::scpi::{ScpiSession, SessionOptions};
use crate::{
    Args, BoxInstrument, Description, DriverError, Instrument, InstrumentConfig, MethodSpec,
    MethodTable, ParamSpec, ParamType, StateField,
};

/// What a power supply sets or measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quantity {
    /// Output voltage, V.
    Voltage,
    /// Output current (as a setting: the current limit), A.
    Current,
}

impl Quantity {
    /// `"voltage"` / `"current"`: the key in replies and states.
    pub fn name(self) -> &'static str {
        match self {
            Quantity::Voltage => "voltage",
            Quantity::Current => "current",
        }
    }

    /// The unit, `V` / `A`.
    pub fn unit(self) -> &'static str {
        match self {
            Quantity::Voltage => "V",
            Quantity::Current => "A",
        }
    }

    /// The SCPI mnemonic, `VOLT` / `CURR`.
    fn scpi(self) -> &'static str {
        match self {
            Quantity::Voltage => "VOLT",
            Quantity::Current => "CURR",
        }
    }

    /// The channel's highest setting of this quantity.
    fn max(self, lim: &ChannelLimits) -> f64 {
        match self {
            Quantity::Voltage => lim.max_voltage,
            Quantity::Current => lim.max_current,
        }
    }
}

/// The methods every PSU family serves: `describe()` lists
/// [`PsuMethod::ALL`] and `call()` matches on the parsed method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PsuMethod {
    /// `set_voltage(value, channel=1)`.
    SetVoltage,
    /// `set_current(value, channel=1)`: the current limit.
    SetCurrent,
    /// `set_output(on, channel=1)`.
    SetOutput,
    /// `measure_voltage(channel=1)`.
    MeasureVoltage,
    /// `measure_current(channel=1)`.
    MeasureCurrent,
    /// `get_state()`: every channel.
    GetState,
    /// `identify()`: `*IDN?`.
    Identify,
}

impl MethodTable for PsuMethod {
    const ALL: &'static [PsuMethod] = &[
        PsuMethod::SetVoltage,
        PsuMethod::SetCurrent,
        PsuMethod::SetOutput,
        PsuMethod::MeasureVoltage,
        PsuMethod::MeasureCurrent,
        PsuMethod::GetState,
        PsuMethod::Identify,
    ];

    fn name(self) -> &'static str {
        match self {
            PsuMethod::SetVoltage => "set_voltage",
            PsuMethod::SetCurrent => "set_current",
            PsuMethod::SetOutput => "set_output",
            PsuMethod::MeasureVoltage => "measure_voltage",
            PsuMethod::MeasureCurrent => "measure_current",
            PsuMethod::GetState => "get_state",
            PsuMethod::Identify => "identify",
        }
    }
}

impl PsuMethod {
    /// The method's description for `model` (ranges from its channels).
    pub fn spec(self, model: &PsuModel) -> MethodSpec {
        let n = model.channels.len() as f64;
        let channel = || ParamSpec::optional("channel", ParamType::Int, json!(1)).range(1.0, n);
        let level = |q: Quantity, what: &str| {
            let max = model.channels.iter().map(|c| q.max(c)).fold(0.0, f64::max);
            // The envelope for clients that read only min/max; each
            // channel's own range in `range_by` (E36313A: CH1 is 6 V).
            let mut value = ParamSpec::required("value", ParamType::Float)
                .unit(q.unit())
                .range(0.0, max);
            if model.channels.len() > 1 {
                for (i, c) in model.channels.iter().enumerate() {
                    value = value.range_when("channel", json!(i + 1), 0.0, q.max(c));
                }
            }
            MethodSpec::new(
                self.name(),
                &format!("Set the {what} ({})", limits_doc(model, q)),
            )
            .param(value)
            .param(channel())
        };
        match self {
            PsuMethod::SetVoltage => level(Quantity::Voltage, "output voltage"),
            PsuMethod::SetCurrent => level(Quantity::Current, "current limit"),
            PsuMethod::SetOutput => MethodSpec::new(self.name(), "Switch an output on or off")
                .param(ParamSpec::required("on", ParamType::Bool))
                .param(channel()),
            PsuMethod::MeasureVoltage => MethodSpec::new(self.name(), "Measured output voltage, V")
                .param(channel())
                .read_only(),
            PsuMethod::MeasureCurrent => MethodSpec::new(self.name(), "Measured output current, A")
                .param(channel())
                .read_only(),
            PsuMethod::GetState => MethodSpec::new(
                self.name(),
                "Every channel's settings, output state and measurements",
            )
            .read_only(),
            PsuMethod::Identify => MethodSpec::new(self.name(), "The *IDN? string").read_only(),
        }
    }
}

/// A power supply of one [`Family`], driven over SCPI.
#[derive(Debug)]
pub struct PsuDriver {
    id: String,
    model: &'static PsuModel,
    session: ScpiSession,
}

impl PsuDriver {
    /// A driver for `model` talking over `session` (not yet connected).
    pub fn new(id: &str, model: &'static PsuModel, session: ScpiSession) -> Self {
        PsuDriver {
            id: id.to_string(),
            model,
            session,
        }
    }

    /// Build from an instrument's config: `resource` (required), option
    /// `model` (default: the family's flagship), serial and session options.
    /// `check_errors` defaults to true, so a rejected setting fails the call;
    /// `identify` too, so the identity is known from the first exchange.
    /// The link opens on the first call (an instrument switched on after the
    /// relay starts is fine).
    pub fn from_config(family: Family, cfg: &InstrumentConfig) -> Result<Self, DriverError> {
        let model = match cfg.options.get("model") {
            None => family.default_model(),
            Some(Value::String(name)) => family.model(name)?,
            Some(other) => {
                return Err(DriverError::Config(format!(
                    "option 'model': expected a model name, got {other}"
                )))
            }
        };
        let defaults = SessionOptions {
            check_errors: true,
            identify: true,
            ..SessionOptions::default()
        };
        let session = ScpiSession::from_config(cfg, defaults)?;
        Ok(PsuDriver::new(&cfg.id, model, session))
    }

    /// The model driven.
    pub fn model(&self) -> &'static PsuModel {
        self.model
    }

    /// The SCPI session (for tests and extensions).
    pub fn session(&mut self) -> &mut ScpiSession {
        &mut self.session
    }

    fn family(&self) -> Family {
        self.model.family
    }

    fn channel(&self, args: &Args) -> Result<usize, DriverError> {
        let n = args.i64("channel")?;
        usize::try_from(n)
            .ok()
            .filter(|c| (1..=self.model.channels.len()).contains(c))
            .ok_or_else(|| {
                DriverError::bad_param(
                    "channel",
                    format!(
                        "{} has channels 1..={}",
                        self.model.model,
                        self.model.channels.len()
                    ),
                )
            })
    }

    /// Keysight selects a channel first (multi-output models only).
    fn select(&self, ch: usize) -> String {
        if self.model.channels.len() > 1 {
            format!("INST:NSEL {ch};:")
        } else {
            String::new()
        }
    }

    fn limit_check(&self, q: Quantity, value: f64, ch: usize) -> Result<(), DriverError> {
        let Some(lim) = ch.checked_sub(1).and_then(|i| self.model.channels.get(i)) else {
            return Err(DriverError::bad_param("channel", "no such channel"));
        };
        let (max, unit) = (q.max(lim), q.unit());
        if value > max {
            return Err(DriverError::bad_param(
                "value",
                format!(
                    "{value} {unit} is above {}'s maximum {max} {unit} ({})",
                    lim.name, self.model.model
                ),
            ));
        }
        Ok(())
    }

    /// Set the voltage or the current limit of channel `ch`.
    pub async fn set_level(
        &mut self,
        q: Quantity,
        value: f64,
        ch: usize,
    ) -> Result<(), DriverError> {
        self.limit_check(q, value, ch)?;
        let m = q.scpi();
        let cmd = match self.family() {
            Family::KeysightE36xx => format!("{}{m} {value}", self.select(ch)),
            Family::RigolDp8xx => format!(":SOUR{ch}:{m} {value}"),
            Family::SiglentSpd3303x => format!("CH{ch}:{m} {value}"),
        };
        self.session.write(&cmd).await
    }

    /// Switch an output on or off.
    pub async fn set_output(&mut self, on: bool, ch: usize) -> Result<(), DriverError> {
        let state = if on { "ON" } else { "OFF" };
        let cmd = match self.family() {
            Family::KeysightE36xx => format!("{}OUTP {state}", self.select(ch)),
            Family::RigolDp8xx => format!(":OUTP CH{ch},{state}"),
            Family::SiglentSpd3303x => format!("OUTP CH{ch},{state}"),
        };
        self.session.write(&cmd).await
    }

    async fn query_f64(&mut self, cmd: &str) -> Result<f64, DriverError> {
        let r = self.session.query(cmd).await?;
        parse_f64(&r)
            .ok_or_else(|| DriverError::Instrument(format!("{cmd}: expected a number, got {r:?}")))
    }

    /// Measured voltage or current of channel `ch`.
    pub async fn measure(&mut self, q: Quantity, ch: usize) -> Result<f64, DriverError> {
        let q = q.scpi();
        let cmd = match self.family() {
            Family::KeysightE36xx => format!("{}MEAS:{q}?", self.select(ch)),
            Family::RigolDp8xx => format!(":MEAS:{q}? CH{ch}"),
            Family::SiglentSpd3303x => format!("MEAS:{q}? CH{ch}"),
        };
        self.query_f64(&cmd).await
    }

    /// Programmed voltage or current limit of channel `ch`.
    pub async fn setting(&mut self, q: Quantity, ch: usize) -> Result<f64, DriverError> {
        let q = q.scpi();
        let cmd = match self.family() {
            Family::KeysightE36xx => format!("{}{q}?", self.select(ch)),
            Family::RigolDp8xx => format!(":SOUR{ch}:{q}?"),
            Family::SiglentSpd3303x => format!("CH{ch}:{q}?"),
        };
        self.query_f64(&cmd).await
    }

    /// Whether an output is on.
    pub async fn output(&mut self, ch: usize) -> Result<bool, DriverError> {
        match self.family() {
            Family::KeysightE36xx => {
                let cmd = format!("{}OUTP?", self.select(ch));
                let r = self.session.query(&cmd).await?;
                parse_bool(&r).ok_or_else(|| DriverError::Instrument(format!("{cmd}: got {r:?}")))
            }
            Family::RigolDp8xx => {
                let cmd = format!(":OUTP? CH{ch}");
                let r = self.session.query(&cmd).await?;
                parse_bool(&r).ok_or_else(|| DriverError::Instrument(format!("{cmd}: got {r:?}")))
            }
            Family::SiglentSpd3303x => {
                // SPD3303X manual: SYSTem:STATus? bit 4 = CH1 on, bit 5 = CH2 on.
                let r = self.session.query("SYST:STAT?").await?;
                let t = r.trim();
                let bits =
                    u32::from_str_radix(t.trim_start_matches("0x").trim_start_matches("0X"), 16)
                        .map_err(|_| DriverError::Instrument(format!("SYST:STAT?: got {r:?}")))?;
                Ok(bits & (1 << (3 + ch)) != 0)
            }
        }
    }

    /// `*IDN?` (the session keeps the answer; it also asks whenever the
    /// link opens).
    pub async fn identify(&mut self) -> Result<String, DriverError> {
        self.session.idn().await
    }

    /// The identity, once known.
    pub fn identity(&self) -> Option<&str> {
        self.session.identity()
    }

    async fn channel_state(&mut self, ch: usize) -> Result<Value, DriverError> {
        Ok(json!({
            "channel": ch,
            "voltage_set": self.setting(Quantity::Voltage, ch).await?,
            "current_set": self.setting(Quantity::Current, ch).await?,
            "output": self.output(ch).await?,
            "voltage": self.measure(Quantity::Voltage, ch).await?,
            "current": self.measure(Quantity::Current, ch).await?,
        }))
    }

    /// Every channel's settings, output state and measurements.
    pub async fn state(&mut self) -> Result<Value, DriverError> {
        // Normally learned as the link opened; asked here when `identify`
        // is off or the open did not get an answer.
        if self.session.identity().is_none() {
            self.session.connect().await?;
            if self.session.identity().is_none() {
                self.identify().await?;
            }
        }
        let mut channels = Vec::new();
        for ch in 1..=self.model.channels.len() {
            channels.push(self.channel_state(ch).await?);
        }
        let first = channels.first().cloned().unwrap_or(Value::Null);
        Ok(json!({
            "relay_id": self.id,
            "model": self.model.model,
            "idn": self.session.identity(),
            "connected": self.session.is_connected(),
            // Channel 1 at the top level, shaped like mock-psu's state.
            "voltage_set": first.get("voltage_set"),
            "current_set": first.get("current_set"),
            "voltage": first.get("voltage"),
            "current": first.get("current"),
            "output": first.get("output"),
            "channels": channels,
        }))
    }
}

fn parse_f64(s: &str) -> Option<f64> {
    s.trim()
        .trim_matches('"')
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().trim_matches('"').to_ascii_uppercase().as_str() {
        "1" | "ON" | "+1" => Some(true),
        "0" | "OFF" | "+0" => Some(false),
        _ => None,
    }
}

/// What the top-level state fields are (channel 1): the settings, and the
/// measured voltage reading back the voltage setting while the output is
/// on, within 0.1 % of the channel's range (at least 5 mV). The measured
/// current is not compared: below the limit it follows the load.
fn psu_state_fields(model: &PsuModel) -> Vec<StateField> {
    let max_v = model.channels.first().map(|c| c.max_voltage).unwrap_or(0.0);
    vec![
        StateField::setpoint("voltage_set", "set_voltage").unit("V"),
        StateField::setpoint("current_set", "set_current").unit("A"),
        StateField::setpoint("output", "set_output"),
        StateField::measurement("voltage", "voltage_set", (max_v * 0.001).max(0.005))
            .unit("V")
            .active_when("output"),
        StateField::new("current").unit("A"),
    ]
}

fn limits_doc(model: &PsuModel, q: Quantity) -> String {
    model
        .channels
        .iter()
        .map(|l| format!("{} ≤ {} {}", l.name, q.max(l), q.unit()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait::async_trait]
impl Instrument for PsuDriver {
    fn identity(&self) -> Option<String> {
        self.session.identity().map(str::to_string)
    }

    fn describe(&self) -> Description {
        Description {
            driver: self.model.family.driver_name().to_string(),
            identity: self.session.identity().map(str::to_string),
            methods: PsuMethod::ALL.iter().map(|m| m.spec(self.model)).collect(),
            state_fields: psu_state_fields(self.model),
        }
    }

    async fn call(&mut self, method: &str, args: Args) -> Result<Value, DriverError> {
        let Some(m) = PsuMethod::from_name(method) else {
            return Err(DriverError::UnknownMethod(method.to_string()));
        };
        match m {
            PsuMethod::SetVoltage | PsuMethod::SetCurrent => {
                let q = if m == PsuMethod::SetVoltage {
                    Quantity::Voltage
                } else {
                    Quantity::Current
                };
                let ch = self.channel(&args)?;
                let value = args.f64("value")?;
                self.set_level(q, value, ch).await?;
                Ok(json!({"ok": true, "channel": ch, q.name(): value}))
            }
            PsuMethod::SetOutput => {
                let ch = self.channel(&args)?;
                let on = args.bool("on")?;
                self.set_output(on, ch).await?;
                Ok(json!({"ok": true, "channel": ch, "output": on}))
            }
            PsuMethod::MeasureVoltage => {
                let ch = self.channel(&args)?;
                Ok(json!(self.measure(Quantity::Voltage, ch).await?))
            }
            PsuMethod::MeasureCurrent => {
                let ch = self.channel(&args)?;
                Ok(json!(self.measure(Quantity::Current, ch).await?))
            }
            PsuMethod::GetState => self.state().await,
            PsuMethod::Identify => Ok(json!(self.identify().await?)),
        }
    }

    async fn poll(&mut self) -> Result<Value, DriverError> {
        self.state().await
    }

    async fn lan_message(&mut self, message: &str) -> Result<Option<Vec<u8>>, DriverError> {
        self.session.passthrough(message).await
    }

    async fn shutdown(&mut self) {
        self.session.close().await;
    }
}

/// The family drivers' options: `model` and the session's (`check_errors`
/// on by default).
pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec::new(
        "model",
        OptionType::String,
        "the model, for its channel limits (default: the family's first model)",
    ),
    options::TIMEOUT_MS,
    options::CONNECT_TIMEOUT_MS,
    options::WRITE_TERMINATION,
    options::READ_TERMINATION,
    OptionSpec::new(
        "check_errors",
        OptionType::Bool,
        "query SYST:ERR? after every write and fail on an entry (default true)",
    ),
    options::IDENTIFY,
    options::INIT,
    options::MAX_REPLY,
    options::DRAIN_QUIET_MS,
    options::BAUD,
    options::BAUD_RATE,
    options::DATA_BITS,
    options::PARITY,
    options::STOP_BITS,
    options::FLOW,
    options::ADAPTER,
    options::HISLIP_MODE,
];

/// Register the three family drivers.
pub fn register(r: &mut crate::DriverRegistry) {
    for family in Family::ALL {
        r.register(
            family.driver_name(),
            OPTIONS,
            move |cfg: InstrumentConfig| async move {
                Ok(Box::new(PsuDriver::from_config(family, &cfg)?) as BoxInstrument)
            },
        );
    }
}
