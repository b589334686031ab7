//! The [`Instrument`] trait, method descriptions and argument binding.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What a driver call can fail with. Each variant maps to a stable RPC
/// error code (see [`DriverError::code`]).
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The instrument has no such method.
    #[error("unknown method: {0}")]
    UnknownMethod(String),
    /// A parameter is missing, unexpected, of the wrong type or out of range.
    #[error("bad parameter '{param}': {why}")]
    BadParam {
        /// The parameter's name.
        param: String,
        /// What is wrong with it.
        why: String,
    },
    /// The instrument did not answer within the deadline.
    #[error("instrument timeout after {0:?}")]
    Timeout(Duration),
    /// The instrument is busy or locked by someone else.
    #[error("instrument busy: {0}")]
    Busy(String),
    /// The instrument answered, and the answer was "no" (an SCPI error
    /// queue entry, a firmware error, an unparseable reply).
    #[error("instrument error: {0}")]
    Instrument(String),
    /// The link to the instrument failed (closed socket, unplugged port,
    /// refused connection). The message includes the I/O error's, so it
    /// stays meaningful when sent over RPC as text.
    #[error("link to instrument failed: {context}: {source}")]
    Link {
        /// What was being done, naming the resource (`tcp://host:5025`,
        /// the serial port).
        context: String,
        /// The I/O error behind it (for failures without one, such as the
        /// peer closing the link, an error of the matching
        /// [`std::io::ErrorKind`]).
        #[source]
        source: std::io::Error,
    },
    /// The driver's configuration is wrong (bad resource string, option).
    #[error("driver configuration: {0}")]
    Config(String),
    /// An instrument's options name a key its driver does not declare
    /// (see [`crate::OptionSpec`]); the caller adds which instrument.
    #[error(
        "driver configuration: '{key}' is not a {driver} option (known: {})",
        if known.is_empty() { "none".to_string() } else { known.join(", ") }
    )]
    UnknownOption {
        /// The driver's registry name.
        driver: String,
        /// The key.
        key: String,
        /// The options the driver declares.
        known: Vec<&'static str>,
    },
    /// A configuration file (a declarative driver, a driver directory)
    /// could not be read.
    #[error("driver configuration: cannot read {path}: {source}", path = .path.display())]
    ReadConfig {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What a caller should do about a [`DriverError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverErrorKind {
    /// Fix the request; retrying it unchanged will fail again.
    Request,
    /// Retry later: the instrument was slow or busy.
    Retry,
    /// The link is down: the driver reconnects, retry later.
    Reconnect,
    /// Report: the instrument or configuration needs a person.
    Report,
}

impl DriverError {
    /// A bad-parameter error.
    pub fn bad_param(param: impl Into<String>, why: impl Into<String>) -> Self {
        DriverError::BadParam {
            param: param.into(),
            why: why.into(),
        }
    }

    /// A link failure: `context` names the resource and what was being done.
    pub fn link(context: impl Into<String>, source: std::io::Error) -> Self {
        DriverError::Link {
            context: context.into(),
            source,
        }
    }

    /// A link failure without an underlying I/O error of its own (the peer
    /// closed the link, nothing is connected): an I/O error of `kind` with
    /// message `why` stands in for it.
    pub fn link_lost(
        context: impl Into<String>,
        kind: std::io::ErrorKind,
        why: &'static str,
    ) -> Self {
        DriverError::link(context, std::io::Error::new(kind, why))
    }

    /// The stable RPC error code for this error.
    pub fn code(&self) -> i64 {
        match self {
            DriverError::UnknownMethod(_) => 404,
            DriverError::BadParam { .. } => 400,
            DriverError::Timeout(_) => 408,
            DriverError::Busy(_) => 409,
            DriverError::Instrument(_)
            | DriverError::Config(_)
            | DriverError::UnknownOption { .. }
            | DriverError::ReadConfig { .. } => 500,
            DriverError::Link { .. } => 503,
        }
    }

    /// What to do about it.
    pub fn kind(&self) -> DriverErrorKind {
        match self {
            DriverError::UnknownMethod(_) | DriverError::BadParam { .. } => {
                DriverErrorKind::Request
            }
            DriverError::Timeout(_) | DriverError::Busy(_) => DriverErrorKind::Retry,
            DriverError::Link { .. } => DriverErrorKind::Reconnect,
            DriverError::Instrument(_)
            | DriverError::Config(_)
            | DriverError::UnknownOption { .. }
            | DriverError::ReadConfig { .. } => DriverErrorKind::Report,
        }
    }
}

/// The JSON type a parameter takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// A number (integers are accepted).
    Float,
    /// An integer.
    Int,
    /// `true` / `false` (also 0/1 and "on"/"off", as instruments say).
    Bool,
    /// A string.
    String,
    /// Any JSON value, passed through.
    Any,
}

/// One parameter of a method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    /// Name used in named (object) params.
    pub name: String,
    /// JSON type.
    #[serde(rename = "type")]
    pub ty: ParamType,
    /// Physical unit, e.g. "V".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Inclusive lower bound (numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Inclusive upper bound (numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Value used when the caller omits it; `None` makes it required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

impl ParamSpec {
    /// A required parameter.
    pub fn required(name: &str, ty: ParamType) -> Self {
        ParamSpec {
            name: name.to_string(),
            ty,
            unit: None,
            min: None,
            max: None,
            default: None,
        }
    }

    /// An optional parameter with a default.
    pub fn optional(name: &str, ty: ParamType, default: Value) -> Self {
        ParamSpec {
            default: Some(default),
            ..ParamSpec::required(name, ty)
        }
    }

    /// Set the unit.
    pub fn unit(mut self, unit: &str) -> Self {
        self.unit = Some(unit.to_string());
        self
    }

    /// Set an inclusive range.
    pub fn range(mut self, min: f64, max: f64) -> Self {
        self.min = Some(min);
        self.max = Some(max);
        self
    }

    /// Check and normalise one value for this parameter.
    fn check(&self, v: &Value) -> Result<Value, DriverError> {
        let bad = |why: String| DriverError::bad_param(&self.name, why);
        let out = match self.ty {
            ParamType::Any => v.clone(),
            ParamType::String => match v {
                Value::String(_) => v.clone(),
                other => return Err(bad(format!("expected a string, got {other}"))),
            },
            ParamType::Bool => match v {
                Value::Bool(_) => v.clone(),
                Value::Number(n) if n.as_f64() == Some(0.0) => Value::Bool(false),
                Value::Number(n) if n.as_f64() == Some(1.0) => Value::Bool(true),
                Value::String(s) => match s.to_ascii_lowercase().as_str() {
                    "on" | "true" | "1" => Value::Bool(true),
                    "off" | "false" | "0" => Value::Bool(false),
                    _ => return Err(bad(format!("expected a boolean, got {s:?}"))),
                },
                other => return Err(bad(format!("expected a boolean, got {other}"))),
            },
            ParamType::Int => match v.as_i64() {
                Some(i) => Value::from(i),
                None => match v.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
                    _ => return Err(bad(format!("expected an integer, got {v}"))),
                },
            },
            ParamType::Float => match v.as_f64() {
                Some(f) if f.is_finite() => v.clone(),
                _ => return Err(bad(format!("expected a number, got {v}"))),
            },
        };
        if let Some(x) = out.as_f64() {
            if let Some(min) = self.min {
                if x < min {
                    return Err(bad(format!("{x} is below the minimum {min}")));
                }
            }
            if let Some(max) = self.max {
                if x > max {
                    return Err(bad(format!("{x} is above the maximum {max}")));
                }
            }
        }
        Ok(out)
    }
}

/// One callable method of an instrument.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodSpec {
    /// Method name as called over RPC.
    pub name: String,
    /// One line on what it does.
    #[serde(default)]
    pub doc: String,
    /// Parameters in positional order.
    #[serde(default)]
    pub params: Vec<ParamSpec>,
}

impl MethodSpec {
    /// A method with no parameters yet.
    pub fn new(name: &str, doc: &str) -> Self {
        MethodSpec {
            name: name.to_string(),
            doc: doc.to_string(),
            params: Vec::new(),
        }
    }

    /// Add a parameter.
    pub fn param(mut self, p: ParamSpec) -> Self {
        self.params.push(p);
        self
    }

    /// Bind JSON params as labmesh sends them: an object gives named
    /// arguments, an array positional ones, `null` none, and any other value
    /// is the single (first) argument. Falsy values (0, false, "", []) are
    /// passed as given.
    pub fn bind(&self, params: &Value) -> Result<Args, DriverError> {
        let mut given: Vec<(String, Value)> = Vec::new();
        match params {
            Value::Null => {}
            Value::Object(map) => {
                for (k, v) in map {
                    if !self.params.iter().any(|p| &p.name == k) {
                        return Err(DriverError::bad_param(
                            k,
                            format!("{} takes no parameter named '{k}'", self.name),
                        ));
                    }
                    given.push((k.clone(), v.clone()));
                }
            }
            Value::Array(items) => {
                if items.len() > self.params.len() {
                    return Err(DriverError::bad_param(
                        "params",
                        format!(
                            "{} takes at most {} positional parameter(s), got {}",
                            self.name,
                            self.params.len(),
                            items.len()
                        ),
                    ));
                }
                for (p, v) in self.params.iter().zip(items) {
                    given.push((p.name.clone(), v.clone()));
                }
            }
            scalar => match self.params.first() {
                Some(p) => given.push((p.name.clone(), scalar.clone())),
                None => {
                    return Err(DriverError::bad_param(
                        "params",
                        format!("{} takes no parameters", self.name),
                    ))
                }
            },
        }
        let mut out = Map::new();
        for p in &self.params {
            let v = match given.iter().find(|(k, _)| k == &p.name) {
                Some((_, v)) => p.check(v)?,
                None => match &p.default {
                    Some(d) => d.clone(),
                    None => {
                        return Err(DriverError::bad_param(
                            &p.name,
                            "missing required parameter",
                        ))
                    }
                },
            };
            out.insert(p.name.clone(), v);
        }
        Ok(Args(out))
    }
}

/// Arguments bound to a [`MethodSpec`]: every declared parameter is present,
/// type-checked and range-checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Args(pub Map<String, Value>);

impl Args {
    fn get(&self, name: &str) -> Result<&Value, DriverError> {
        self.0
            .get(name)
            .ok_or_else(|| DriverError::bad_param(name, "missing required parameter"))
    }

    /// A number argument.
    pub fn f64(&self, name: &str) -> Result<f64, DriverError> {
        self.get(name)?
            .as_f64()
            .ok_or_else(|| DriverError::bad_param(name, "expected a number"))
    }

    /// An integer argument.
    pub fn i64(&self, name: &str) -> Result<i64, DriverError> {
        self.get(name)?
            .as_i64()
            .ok_or_else(|| DriverError::bad_param(name, "expected an integer"))
    }

    /// A boolean argument.
    pub fn bool(&self, name: &str) -> Result<bool, DriverError> {
        self.get(name)?
            .as_bool()
            .ok_or_else(|| DriverError::bad_param(name, "expected a boolean"))
    }

    /// A string argument.
    pub fn str(&self, name: &str) -> Result<&str, DriverError> {
        self.get(name)?
            .as_str()
            .ok_or_else(|| DriverError::bad_param(name, "expected a string"))
    }

    /// Any argument as JSON.
    pub fn value(&self, name: &str) -> Result<&Value, DriverError> {
        self.get(name)
    }
}

/// What an instrument offers: its driver and methods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// Driver name (as in the registry).
    pub driver: String,
    /// Identification string, when known (`*IDN?`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Callable methods.
    pub methods: Vec<MethodSpec>,
}

impl Description {
    /// The method named `name`.
    pub fn method(&self, name: &str) -> Option<&MethodSpec> {
        self.methods.iter().find(|m| m.name == name)
    }

    /// Look up `method` and bind `params` to it.
    pub fn bind(&self, method: &str, params: &Value) -> Result<Args, DriverError> {
        self.method(method)
            .ok_or_else(|| DriverError::UnknownMethod(method.to_string()))?
            .bind(params)
    }
}

/// A driven instrument. One task owns it, so calls are serialised; the relay
/// runs different instruments concurrently.
#[async_trait::async_trait]
pub trait Instrument: Send {
    /// Methods and parameters. Only these are callable over RPC.
    fn describe(&self) -> Description;

    /// Call `method` with arguments already bound to its [`MethodSpec`].
    async fn call(&mut self, method: &str, args: Args) -> Result<Value, DriverError>;

    /// Read the instrument's state for the state bus.
    async fn poll(&mut self) -> Result<Value, DriverError>;

    /// Release the instrument (close links). Default: nothing.
    async fn shutdown(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> MethodSpec {
        MethodSpec::new("set_voltage", "")
            .param(ParamSpec::required("value", ParamType::Float).range(0.0, 30.0))
            .param(ParamSpec::optional("channel", ParamType::Int, json!(1)))
    }

    #[test]
    fn binds_named_positional_and_scalar() {
        let s = spec();
        assert_eq!(
            s.bind(&json!({"value": 2.5}))
                .unwrap()
                .f64("value")
                .unwrap(),
            2.5
        );
        let a = s.bind(&json!([0, 2])).unwrap();
        assert_eq!(a.f64("value").unwrap(), 0.0);
        assert_eq!(a.i64("channel").unwrap(), 2);
        assert_eq!(s.bind(&json!(1.5)).unwrap().f64("value").unwrap(), 1.5);
    }

    #[test]
    fn rejects_naming_the_parameter() {
        let s = spec();
        let e = s.bind(&json!({})).unwrap_err();
        assert!(e.to_string().contains("'value'"), "{e}");
        assert_eq!(e.code(), 400);
        let e = s.bind(&json!({"value": "x"})).unwrap_err();
        assert!(e.to_string().contains("'value'"), "{e}");
        let e = s.bind(&json!({"value": 31})).unwrap_err();
        assert!(e.to_string().contains("maximum"), "{e}");
        let e = s.bind(&json!({"value": 1, "volts": 2})).unwrap_err();
        assert!(e.to_string().contains("'volts'"), "{e}");
        let e = s.bind(&json!([1, 2, 3])).unwrap_err();
        assert_eq!(e.code(), 400);
    }

    #[test]
    fn falsy_values_are_kept() {
        let s = MethodSpec::new("set_output", "").param(ParamSpec::required("on", ParamType::Bool));
        assert!(!s.bind(&json!({"on": false})).unwrap().bool("on").unwrap());
        assert!(!s.bind(&json!(0)).unwrap().bool("on").unwrap());
    }
}
