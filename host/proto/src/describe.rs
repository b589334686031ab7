//! The method-description schema: what an instrument offers (methods,
//! parameters with type, unit and range, whether a method only reads), as
//! `lm.describe` returns it, and binding a call's JSON params to it.
//!
//! Drivers build a [`Description`]; the relay binds every call against it
//! before the call reaches the instrument, so a bad call is answered at once
//! with a 400 naming the parameter. Clients (the CLI, the dashboard) read the
//! same description to offer forms and completions.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Why call parameters do not fit a method.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BindError {
    /// The instrument has no such method (404).
    #[error("unknown method: {0}")]
    UnknownMethod(String),
    /// A parameter is missing, unexpected, of the wrong type or out of
    /// range (400).
    #[error("bad parameter '{param}': {why}")]
    BadParam {
        /// The parameter's name.
        param: String,
        /// What is wrong with it.
        why: String,
    },
}

impl BindError {
    /// A bad-parameter error.
    pub fn bad_param(param: impl Into<String>, why: impl Into<String>) -> Self {
        BindError::BadParam {
            param: param.into(),
            why: why.into(),
        }
    }

    /// The error code ([`crate::codes`]).
    pub fn code(&self) -> i64 {
        match self {
            BindError::UnknownMethod(_) => crate::codes::NOT_FOUND,
            BindError::BadParam { .. } => crate::codes::BAD_REQUEST,
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
    /// Extension: a narrower range while another parameter has a given
    /// value (a supply's voltage per channel). `min`/`max` stay the
    /// envelope over every case, for clients that do not know this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_by: Option<RangeBy>,
}

/// A parameter's range keyed by another parameter's value:
/// `{"param":"channel","ranges":[{"when":1,"min":0.0,"max":6.0},...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeBy {
    /// The parameter whose (bound) value selects the range.
    pub param: String,
    /// One range per value of `param`; a value not listed keeps the
    /// envelope `min`/`max`.
    pub ranges: Vec<KeyedRange>,
}

/// One case of [`RangeBy`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyedRange {
    /// The other parameter's value.
    pub when: Value,
    /// Inclusive lower bound.
    pub min: f64,
    /// Inclusive upper bound.
    pub max: f64,
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
            range_by: None,
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

    /// A narrower range while parameter `param` is `when` (repeat per case;
    /// see [`RangeBy`]).
    pub fn range_when(mut self, param: &str, when: Value, min: f64, max: f64) -> Self {
        let by = self.range_by.get_or_insert_with(|| RangeBy {
            param: param.to_string(),
            ranges: Vec::new(),
        });
        by.ranges.push(KeyedRange { when, min, max });
        self
    }

    /// Check a bound value against its [`RangeBy`] case, given every bound
    /// argument.
    fn check_keyed(&self, v: &Value, args: &Map<String, Value>) -> Result<(), BindError> {
        let (Some(by), Some(x)) = (&self.range_by, v.as_f64()) else {
            return Ok(());
        };
        let Some(key) = args.get(&by.param) else {
            return Ok(());
        };
        let Some(r) = by.ranges.iter().find(|r| &r.when == key) else {
            return Ok(());
        };
        let bad = |why: String| Err(BindError::bad_param(&self.name, why));
        if x < r.min {
            return bad(format!(
                "{x} is below the minimum {} for {} {key}",
                r.min, by.param
            ));
        }
        if x > r.max {
            return bad(format!(
                "{x} is above the maximum {} for {} {key}",
                r.max, by.param
            ));
        }
        Ok(())
    }

    /// Check and normalise one value for this parameter.
    fn check(&self, v: &Value) -> Result<Value, BindError> {
        let bad = |why: String| BindError::bad_param(&self.name, why);
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
    /// The method only reads (a measurement, a query): safe to call while
    /// someone else drives the instrument, and to stream. Absent on the wire
    /// when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

impl MethodSpec {
    /// A method with no parameters yet.
    pub fn new(name: &str, doc: &str) -> Self {
        MethodSpec {
            name: name.to_string(),
            doc: doc.to_string(),
            params: Vec::new(),
            read_only: false,
        }
    }

    /// Mark the method as read-only.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
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
    pub fn bind(&self, params: &Value) -> Result<Args, BindError> {
        let mut given: Vec<(String, Value)> = Vec::new();
        match params {
            Value::Null => {}
            Value::Object(map) => {
                for (k, v) in map {
                    if !self.params.iter().any(|p| &p.name == k) {
                        return Err(BindError::bad_param(
                            k,
                            format!("{} takes no parameter named '{k}'", self.name),
                        ));
                    }
                    given.push((k.clone(), v.clone()));
                }
            }
            Value::Array(items) => {
                if items.len() > self.params.len() {
                    return Err(BindError::bad_param(
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
                    return Err(BindError::bad_param(
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
                        return Err(BindError::bad_param(&p.name, "missing required parameter"))
                    }
                },
            };
            out.insert(p.name.clone(), v);
        }
        for p in &self.params {
            if let Some(v) = out.get(&p.name) {
                p.check_keyed(v, &out)?;
            }
        }
        Ok(Args(out))
    }
}

/// Arguments bound to a [`MethodSpec`]: every declared parameter is present,
/// type-checked and range-checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Args(pub Map<String, Value>);

impl Args {
    fn get(&self, name: &str) -> Result<&Value, BindError> {
        self.0
            .get(name)
            .ok_or_else(|| BindError::bad_param(name, "missing required parameter"))
    }

    /// A number argument.
    pub fn f64(&self, name: &str) -> Result<f64, BindError> {
        self.get(name)?
            .as_f64()
            .ok_or_else(|| BindError::bad_param(name, "expected a number"))
    }

    /// An integer argument.
    pub fn i64(&self, name: &str) -> Result<i64, BindError> {
        self.get(name)?
            .as_i64()
            .ok_or_else(|| BindError::bad_param(name, "expected an integer"))
    }

    /// A boolean argument.
    pub fn bool(&self, name: &str) -> Result<bool, BindError> {
        self.get(name)?
            .as_bool()
            .ok_or_else(|| BindError::bad_param(name, "expected a boolean"))
    }

    /// A string argument.
    pub fn str(&self, name: &str) -> Result<&str, BindError> {
        self.get(name)?
            .as_str()
            .ok_or_else(|| BindError::bad_param(name, "expected a string"))
    }

    /// Any argument as JSON.
    pub fn value(&self, name: &str) -> Result<&Value, BindError> {
        self.get(name)
    }
}

/// What one top-level field of the instrument's state means (extension):
/// its unit, and whether it is a *setpoint* (what was asked for, set by a
/// method) or a *measurement* of a setpoint (what the instrument reads
/// back). Dashboards compare the two: confirmed / pending / mismatch.
///
/// labmesh v0 has no such list; Python clients ignore it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateField {
    /// The key in the state object.
    pub name: String,
    /// Unit of the value (`V`, `A`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// This field is a setpoint, set by calling this method with the new
    /// value as its first parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_by: Option<String>,
    /// This field is a measurement of the setpoint field named here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measures: Option<String>,
    /// Largest absolute difference between measurement and setpoint that
    /// still counts as confirmed (measurements; `0` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
    /// The comparison only holds while this boolean state field is true
    /// (a supply's `output`): when it is false the measurement is not
    /// expected to follow the setpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_when: Option<String>,
}

impl StateField {
    /// A plain field.
    pub fn new(name: &str) -> Self {
        StateField {
            name: name.to_string(),
            unit: None,
            set_by: None,
            measures: None,
            tolerance: None,
            active_when: None,
        }
    }

    /// A setpoint, set by `method`.
    pub fn setpoint(name: &str, method: &str) -> Self {
        StateField {
            set_by: Some(method.to_string()),
            ..StateField::new(name)
        }
    }

    /// A measurement of the setpoint `setpoint`, confirmed within
    /// `tolerance`.
    pub fn measurement(name: &str, setpoint: &str, tolerance: f64) -> Self {
        StateField {
            measures: Some(setpoint.to_string()),
            tolerance: Some(tolerance),
            ..StateField::new(name)
        }
    }

    /// With a unit.
    pub fn unit(mut self, unit: &str) -> Self {
        self.unit = Some(unit.to_string());
        self
    }

    /// Compared only while the boolean field `field` is true.
    pub fn active_when(mut self, field: &str) -> Self {
        self.active_when = Some(field.to_string());
        self
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
    /// What the state's fields are (extension; absent when the driver
    /// says nothing): setpoints and the measurements that read them back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state_fields: Vec<StateField>,
}

impl Description {
    /// The method named `name`.
    pub fn method(&self, name: &str) -> Option<&MethodSpec> {
        self.methods.iter().find(|m| m.name == name)
    }

    /// The state field named `name`, if the driver described it.
    pub fn state_field(&self, name: &str) -> Option<&StateField> {
        self.state_fields.iter().find(|f| f.name == name)
    }

    /// Look up `method` and bind `params` to it.
    pub fn bind(&self, method: &str, params: &Value) -> Result<Args, BindError> {
        self.method(method)
            .ok_or_else(|| BindError::UnknownMethod(method.to_string()))?
            .bind(params)
    }
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
    fn description_bytes() {
        let d = Description {
            driver: "mock-psu".into(),
            identity: None,
            methods: vec![spec(), MethodSpec::new("measure_voltage", "V").read_only()],
            state_fields: Vec::new(),
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"driver":"mock-psu","methods":[{"name":"set_voltage","doc":"","params":[{"name":"value","type":"float","min":0.0,"max":30.0},{"name":"channel","type":"int","default":1}]},{"name":"measure_voltage","doc":"V","params":[],"read_only":true}]}"#
        );
        let back: Description = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        assert_eq!(d.bind("nope", &Value::Null).unwrap_err().code(), 404);
    }

    #[test]
    fn state_field_bytes() {
        let d = Description {
            driver: "keysight-e36xx".into(),
            identity: None,
            methods: vec![],
            state_fields: vec![
                StateField::setpoint("voltage_set", "set_voltage").unit("V"),
                StateField::measurement("voltage", "voltage_set", 0.01)
                    .unit("V")
                    .active_when("output"),
                StateField::new("output").unit(""),
            ],
        };
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(
            text,
            r#"{"driver":"keysight-e36xx","methods":[],"state_fields":[{"name":"voltage_set","unit":"V","set_by":"set_voltage"},{"name":"voltage","unit":"V","measures":"voltage_set","tolerance":0.01,"active_when":"output"},{"name":"output","unit":""}]}"#
        );
        let back: Description = serde_json::from_str(&text).unwrap();
        assert_eq!(back, d);
        assert_eq!(
            back.state_field("voltage")
                .and_then(|f| f.measures.as_deref()),
            Some("voltage_set")
        );
        // A v0 description (no "state_fields") still decodes, with no fields.
        let v0: Description =
            serde_json::from_str(r#"{"driver":"mock-psu","methods":[]}"#).unwrap();
        assert!(v0.state_fields.is_empty());
    }

    #[test]
    fn ranges_by_another_parameter_bytes_and_binding() {
        let s = MethodSpec::new("set_voltage", "").param(
            ParamSpec::required("value", ParamType::Float)
                .range(0.0, 25.0)
                .range_when("channel", json!(1), 0.0, 6.0),
        );
        let s = s.param(ParamSpec::optional("channel", ParamType::Int, json!(1)));
        assert_eq!(
            serde_json::to_string(&s.params[0]).unwrap(),
            r#"{"name":"value","type":"float","min":0.0,"max":25.0,"range_by":{"param":"channel","ranges":[{"when":1,"min":0.0,"max":6.0}]}}"#
        );
        let e = s.bind(&json!({"value": 7.0})).unwrap_err();
        assert!(e.to_string().contains("maximum 6 for channel 1"), "{e}");
        assert_eq!(e.code(), 400);
        assert!(s.bind(&json!({"value": 7.0, "channel": 2})).is_ok());
        assert!(s.bind(&json!({"value": 6.0, "channel": 1})).is_ok());
        assert!(s.bind(&json!({"value": 26.0, "channel": 2})).is_err());
    }

    #[test]
    fn falsy_values_are_kept() {
        let s = MethodSpec::new("set_output", "").param(ParamSpec::required("on", ParamType::Bool));
        assert!(!s.bind(&json!({"on": false})).unwrap().bool("on").unwrap());
        assert!(!s.bind(&json!(0)).unwrap().bool("on").unwrap());
    }
}
