//! Power supplies: model limits and the family drivers
//! (`keysight-e36xx`, `rigol-dp8xx`, `siglent-spd3303x`).
//!
//! Every family offers the same methods: `set_voltage(value, channel=1)`,
//! `set_current(value, channel=1)`, `set_output(on, channel=1)`,
//! `measure_voltage(channel=1)`, `measure_current(channel=1)`, `get_state()`,
//! `identify()`. Only the SCPI sent differs ([`Family`]).

pub mod models;

use serde_json::{json, Value};

use self::models::{Family, PsuModel};
use crate::scpi::{ScpiSession, SessionOptions};
use crate::{
    Args, BoxInstrument, Description, DriverError, Instrument, InstrumentConfig, MethodSpec,
    ParamSpec, ParamType,
};

/// A power supply of one [`Family`], driven over SCPI.
#[derive(Debug)]
pub struct PsuDriver {
    id: String,
    model: &'static PsuModel,
    session: ScpiSession,
    identity: Option<String>,
}

impl PsuDriver {
    /// A driver for `model` talking over `session` (not yet connected).
    pub fn new(id: &str, model: &'static PsuModel, session: ScpiSession) -> Self {
        PsuDriver {
            id: id.to_string(),
            model,
            session,
            identity: None,
        }
    }

    /// Build from an instrument's config: `resource` (required), option
    /// `model` (default: the family's flagship), serial and session options.
    /// `check_errors` defaults to true, so a rejected setting fails the call.
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

    fn limit_check(&self, what: &str, value: f64, ch: usize) -> Result<(), DriverError> {
        let Some(lim) = ch.checked_sub(1).and_then(|i| self.model.channels.get(i)) else {
            return Err(DriverError::bad_param("channel", "no such channel"));
        };
        let (max, unit) = if what == "voltage" {
            (lim.max_voltage, "V")
        } else {
            (lim.max_current, "A")
        };
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

    /// Set voltage (`what = "voltage"`) or current limit.
    pub async fn set_level(
        &mut self,
        what: &str,
        value: f64,
        ch: usize,
    ) -> Result<(), DriverError> {
        self.limit_check(what, value, ch)?;
        let cmd = match (self.family(), what) {
            (Family::KeysightE36xx, "voltage") => format!("{}VOLT {value}", self.select(ch)),
            (Family::KeysightE36xx, _) => format!("{}CURR {value}", self.select(ch)),
            (Family::RigolDp8xx, "voltage") => format!(":SOUR{ch}:VOLT {value}"),
            (Family::RigolDp8xx, _) => format!(":SOUR{ch}:CURR {value}"),
            (Family::SiglentSpd3303x, "voltage") => format!("CH{ch}:VOLT {value}"),
            (Family::SiglentSpd3303x, _) => format!("CH{ch}:CURR {value}"),
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

    /// Measured voltage (`what = "voltage"`) or current.
    pub async fn measure(&mut self, what: &str, ch: usize) -> Result<f64, DriverError> {
        let q = if what == "voltage" { "VOLT" } else { "CURR" };
        let cmd = match self.family() {
            Family::KeysightE36xx => format!("{}MEAS:{q}?", self.select(ch)),
            Family::RigolDp8xx => format!(":MEAS:{q}? CH{ch}"),
            Family::SiglentSpd3303x => format!("MEAS:{q}? CH{ch}"),
        };
        self.query_f64(&cmd).await
    }

    /// Programmed voltage (`what = "voltage"`) or current limit.
    pub async fn setting(&mut self, what: &str, ch: usize) -> Result<f64, DriverError> {
        let q = if what == "voltage" { "VOLT" } else { "CURR" };
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

    /// `*IDN?` (cached after the first answer).
    pub async fn identify(&mut self) -> Result<String, DriverError> {
        let idn = self.session.idn().await?;
        self.identity = Some(idn.clone());
        Ok(idn)
    }

    async fn channel_state(&mut self, ch: usize) -> Result<Value, DriverError> {
        Ok(json!({
            "channel": ch,
            "voltage_set": self.setting("voltage", ch).await?,
            "current_set": self.setting("current", ch).await?,
            "output": self.output(ch).await?,
            "voltage": self.measure("voltage", ch).await?,
            "current": self.measure("current", ch).await?,
        }))
    }

    /// Every channel's settings, output state and measurements.
    pub async fn state(&mut self) -> Result<Value, DriverError> {
        if self.identity.is_none() {
            self.identify().await?;
        }
        let mut channels = Vec::new();
        for ch in 1..=self.model.channels.len() {
            channels.push(self.channel_state(ch).await?);
        }
        let first = channels.first().cloned().unwrap_or(Value::Null);
        Ok(json!({
            "relay_id": self.id,
            "model": self.model.model,
            "idn": self.identity,
            "connected": self.session.is_connected(),
            // Channel 1 at the top level, shaped like mock-psu's state.
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

fn limits_doc(model: &PsuModel, what: &str) -> String {
    model
        .channels
        .iter()
        .map(|l| {
            if what == "voltage" {
                format!("{} ≤ {} V", l.name, l.max_voltage)
            } else {
                format!("{} ≤ {} A", l.name, l.max_current)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait::async_trait]
impl Instrument for PsuDriver {
    fn describe(&self) -> Description {
        let m = self.model;
        let n = m.channels.len() as f64;
        let vmax = m.channels.iter().map(|c| c.max_voltage).fold(0.0, f64::max);
        let imax = m.channels.iter().map(|c| c.max_current).fold(0.0, f64::max);
        let channel = || ParamSpec::optional("channel", ParamType::Int, json!(1)).range(1.0, n);
        Description {
            driver: m.family.driver_name().to_string(),
            identity: self.identity.clone(),
            methods: vec![
                MethodSpec::new(
                    "set_voltage",
                    &format!("Set the output voltage ({})", limits_doc(m, "voltage")),
                )
                .param(
                    ParamSpec::required("value", ParamType::Float)
                        .unit("V")
                        .range(0.0, vmax),
                )
                .param(channel()),
                MethodSpec::new(
                    "set_current",
                    &format!("Set the current limit ({})", limits_doc(m, "current")),
                )
                .param(
                    ParamSpec::required("value", ParamType::Float)
                        .unit("A")
                        .range(0.0, imax),
                )
                .param(channel()),
                MethodSpec::new("set_output", "Switch an output on or off")
                    .param(ParamSpec::required("on", ParamType::Bool))
                    .param(channel()),
                MethodSpec::new("measure_voltage", "Measured output voltage, V").param(channel()),
                MethodSpec::new("measure_current", "Measured output current, A").param(channel()),
                MethodSpec::new(
                    "get_state",
                    "Every channel's settings, output state and measurements",
                ),
                MethodSpec::new("identify", "The *IDN? string"),
            ],
        }
    }

    async fn call(&mut self, method: &str, args: Args) -> Result<Value, DriverError> {
        match method {
            "set_voltage" | "set_current" => {
                let what = if method == "set_voltage" {
                    "voltage"
                } else {
                    "current"
                };
                let ch = self.channel(&args)?;
                let value = args.f64("value")?;
                self.set_level(what, value, ch).await?;
                Ok(json!({"ok": true, "channel": ch, what: value}))
            }
            "set_output" => {
                let ch = self.channel(&args)?;
                let on = args.bool("on")?;
                self.set_output(on, ch).await?;
                Ok(json!({"ok": true, "channel": ch, "output": on}))
            }
            "measure_voltage" => {
                let ch = self.channel(&args)?;
                Ok(json!(self.measure("voltage", ch).await?))
            }
            "measure_current" => {
                let ch = self.channel(&args)?;
                Ok(json!(self.measure("current", ch).await?))
            }
            "get_state" => self.state().await,
            "identify" => Ok(json!(self.identify().await?)),
            other => Err(DriverError::UnknownMethod(other.to_string())),
        }
    }

    async fn poll(&mut self) -> Result<Value, DriverError> {
        self.state().await
    }

    async fn shutdown(&mut self) {
        self.session.close().await;
    }
}

/// Register the three family drivers.
pub fn register(r: &mut crate::DriverRegistry) {
    for family in Family::ALL {
        r.register(
            family.driver_name(),
            move |cfg: InstrumentConfig| async move {
                Ok(Box::new(PsuDriver::from_config(family, &cfg)?) as BoxInstrument)
            },
        );
    }
}
