//! `mock-psu`: the labmesh README's MockPSU, in process.

use serde_json::{json, Value};

use crate::{
    Args, Description, DriverError, Instrument, MethodSpec, MethodTable, ParamSpec, ParamType,
    StateField,
};

/// `mock-psu`'s methods: one table for `describe()` and `call()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    SetVoltage,
    SetOutput,
    GetState,
    Poll,
}

impl MethodTable for Method {
    const ALL: &'static [Method] = &[
        Method::SetVoltage,
        Method::SetOutput,
        Method::GetState,
        Method::Poll,
    ];

    fn name(self) -> &'static str {
        match self {
            Method::SetVoltage => "set_voltage",
            Method::SetOutput => "set_output",
            Method::GetState => "get_state",
            Method::Poll => "poll",
        }
    }
}

impl Method {
    fn spec(self) -> MethodSpec {
        let m = |doc: &str| MethodSpec::new(self.name(), doc);
        match self {
            Method::SetVoltage => m("Set the output voltage (0 to 30 V)").param(
                ParamSpec::required("value", ParamType::Float)
                    .unit("V")
                    .range(0.0, MAX_VOLTAGE),
            ),
            Method::SetOutput => {
                m("Switch the output on or off").param(ParamSpec::required("on", ParamType::Bool))
            }
            Method::GetState => m("Voltage, current, output and bookkeeping").read_only(),
            Method::Poll => m("Measure (updates current) and return the state").read_only(),
        }
    }
}

/// The mock supply's highest setting, volts (its range in `describe()`, so
/// -5 V or 1000 V is a 400 before the driver sees it).
pub const MAX_VOLTAGE: f64 = 30.0;

/// The seed's dummy power supply: remembers voltage and output; `poll`
/// makes the current follow the voltage with ±10 % noise.
#[derive(Debug, Clone)]
pub struct MockPsu {
    relay_id: String,
    voltage: f64,
    current: f64,
    output: bool,
    last_updated: f64,
    runs: u64,
}

impl MockPsu {
    /// A supply at 0 V, output off.
    pub fn new(relay_id: &str) -> Self {
        MockPsu {
            relay_id: relay_id.to_string(),
            voltage: 0.0,
            current: 0.0,
            output: false,
            last_updated: now(),
            runs: 0,
        }
    }

    fn state(&self) -> Value {
        json!({
            "relay_id": self.relay_id,
            "voltage": self.voltage,
            "current": self.current,
            "output": self.output,
            "last_updated": self.last_updated,
            "runs": self.runs,
        })
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[async_trait::async_trait]
impl Instrument for MockPsu {
    fn identity(&self) -> Option<String> {
        Some(format!("labmesh,MockPSU,{},0.1", self.relay_id))
    }

    fn describe(&self) -> Description {
        Description {
            driver: "mock-psu".to_string(),
            identity: Some(format!("labmesh,MockPSU,{},0.1", self.relay_id)),
            methods: Method::ALL.iter().map(|m| m.spec()).collect(),
            // `voltage` and `output` are the settings (the mock has no
            // voltage readback); `current` is what it measures.
            state_fields: vec![
                StateField::setpoint("voltage", "set_voltage").unit("V"),
                StateField::new("current").unit("A"),
                StateField::setpoint("output", "set_output"),
            ],
        }
    }

    async fn call(&mut self, method: &str, args: Args) -> Result<Value, DriverError> {
        let Some(m) = Method::from_name(method) else {
            return Err(DriverError::UnknownMethod(method.to_string()));
        };
        match m {
            Method::SetVoltage => {
                self.voltage = args.f64("value")?;
                self.last_updated = now();
                Ok(json!({"ok": true, "voltage": self.voltage}))
            }
            Method::SetOutput => {
                self.output = args.bool("on")?;
                self.last_updated = now();
                Ok(json!({"ok": true, "output": self.output}))
            }
            Method::GetState => Ok(self.state()),
            Method::Poll => self.poll().await,
        }
    }

    async fn poll(&mut self) -> Result<Value, DriverError> {
        let noise: f64 = 0.9 + 0.2 * rand::random::<f64>();
        self.current = (self.voltage * noise * 10_000.0).round() / 10_000.0;
        Ok(self.state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn behaves_like_the_seed() {
        let mut p = MockPsu::new("Inst-0");
        let d = p.describe();
        let r = p
            .call(
                "set_voltage",
                d.bind("set_voltage", &json!({"value": 2.5})).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r, json!({"ok": true, "voltage": 2.5}));
        let r = p
            .call("set_output", d.bind("set_output", &json!([true])).unwrap())
            .await
            .unwrap();
        assert_eq!(r, json!({"ok": true, "output": true}));
        let s = p.poll().await.unwrap();
        let i = s["current"].as_f64().unwrap();
        assert!((2.25..=2.75).contains(&i), "current {i}");
        assert_eq!((i * 10_000.0).round() / 10_000.0, i);
        assert_eq!(s["relay_id"], "Inst-0");
        assert!(d.bind("nope", &Value::Null).is_err());
        // Regression (issue 17): -5 V was accepted.
        for bad in [-5.0, 30.5] {
            let e = d.bind("set_voltage", &json!({"value": bad})).unwrap_err();
            assert_eq!(e.code(), 400, "{bad}");
        }
        assert!(d.bind("set_voltage", &json!({"value": 30.0})).is_ok());
    }
}
