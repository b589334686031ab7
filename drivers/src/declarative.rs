//! Declarative SCPI drivers: an instrument described in a TOML file, loaded
//! at relay start ([`crate::DriverRegistry::load_dir`]), no recompilation.
//!
//! ```toml
//! [driver]
//! name = "keysight-34461a"            # registry name
//! description = "Keysight 34461A 6½-digit DMM"
//!
//! [session]                           # defaults; an instrument's options override them
//! timeout_ms = 5000
//! check_errors = true
//! init = ["*CLS"]
//!
//! [[methods]]
//! name = "configure_dc_voltage"
//! write = "CONF:VOLT:DC {range}"
//! params = [{ name = "range", type = "float", unit = "V", min = 0.1, max = 1000, default = 10 }]
//!
//! [[methods]]
//! name = "read"
//! query = "READ?"
//! reply = "float"
//!
//! [[poll]]
//! name = "voltage"
//! query = "MEAS:VOLT:DC?"
//! reply = "float"
//! ```
//!
//! Parameters are [`ParamSpec`]s (type, unit, range, default), checked
//! before anything is sent. docs/DRIVERS.md has the full reference.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::scpi::{ScpiSession, SessionOptions};
use crate::{
    Args, Description, DriverError, Instrument, InstrumentConfig, MethodSpec, MethodTable,
    ParamSpec, ParamType,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDef {
    driver: DriverSection,
    #[serde(default)]
    session: Option<toml::Table>,
    #[serde(default)]
    methods: Vec<MethodDef>,
    #[serde(default)]
    poll: Vec<PollDef>,
    /// How `labmesh sim toml` simulates the instrument (the driver ignores it).
    #[serde(default)]
    sim: Option<crate::sim::toml::SimSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DriverSection {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default = "on")]
    bool_true: String,
    #[serde(default = "off")]
    bool_false: String,
}

fn on() -> String {
    "ON".into()
}
fn off() -> String {
    "OFF".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MethodDef {
    name: String,
    #[serde(default)]
    doc: String,
    #[serde(default)]
    write: Option<String>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    reply: Option<ReplyFormat>,
    #[serde(default)]
    opc: bool,
    /// The method only reads (works for everyone while the instrument is
    /// leased). Only a `query` may say so.
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    params: Vec<ParamDef>,
}

/// A parameter as written in TOML; becomes a [`ParamSpec`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamDef {
    name: String,
    #[serde(rename = "type")]
    ty: ParamType,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
    #[serde(default)]
    default: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PollDef {
    name: String,
    query: String,
    #[serde(default)]
    reply: Option<ReplyFormat>,
}

/// How a query's reply is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyFormat {
    /// A number (`+5.0E+00`, `5.000`).
    Float,
    /// An integer (`+3`, also `3.0E+00`).
    Int,
    /// `1`/`0`/`ON`/`OFF`/`TRUE`/`FALSE`.
    Bool,
    /// Text, surrounding quotes removed.
    String,
    /// Comma-separated numbers -> a JSON array.
    Floats,
    /// The reply line as is.
    Raw,
    /// An IEEE 488.2 block -> base64 text.
    Block,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Text(String),
    Param(String),
}

/// A command template: text with `{param}` placeholders (`{{`/`}}` for braces).
#[derive(Debug, Clone, PartialEq)]
struct Template(Vec<Segment>);

impl Template {
    fn parse(s: &str) -> Result<Template, String> {
        let mut out = Vec::new();
        let mut text = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("unclosed '{{' in {s:?}")),
                        }
                    }
                    let name = name.trim().to_string();
                    if name.is_empty() {
                        return Err(format!("empty placeholder '{{}}' in {s:?}"));
                    }
                    if !text.is_empty() {
                        out.push(Segment::Text(std::mem::take(&mut text)));
                    }
                    out.push(Segment::Param(name));
                }
                '}' => {
                    return Err(format!(
                        "unmatched '}}' in {s:?} (write '}}}}' for a brace)"
                    ))
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            out.push(Segment::Text(text));
        }
        Ok(Template(out))
    }

    fn params(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|s| match s {
            Segment::Param(p) => Some(p.as_str()),
            Segment::Text(_) => None,
        })
    }

    fn render(&self, args: &Args, def: &DriverDef) -> Result<String, DriverError> {
        let mut out = String::new();
        for seg in &self.0 {
            match seg {
                Segment::Text(t) => out.push_str(t),
                Segment::Param(p) => {
                    let v = args.value(p)?;
                    match v {
                        Value::Bool(true) => out.push_str(&def.bool_true),
                        Value::Bool(false) => out.push_str(&def.bool_false),
                        Value::String(s) => {
                            if s.chars().any(|c| c.is_control() || c == ';') {
                                return Err(DriverError::bad_param(
                                    p,
                                    "must not contain ';' or control characters",
                                ));
                            }
                            out.push_str(s);
                        }
                        Value::Number(n) => out.push_str(&n.to_string()),
                        other => out.push_str(&other.to_string()),
                    }
                }
            }
        }
        Ok(out)
    }
}

#[derive(Debug, Clone)]
enum Action {
    Write { cmd: Template, opc: bool },
    Query { cmd: Template, reply: ReplyFormat },
}

#[derive(Debug, Clone)]
struct Method {
    spec: MethodSpec,
    action: Action,
}

/// A loaded declarative driver definition.
#[derive(Debug, Clone)]
pub struct DriverDef {
    /// Registry name.
    pub name: String,
    /// One line about the instrument.
    pub description: String,
    /// The file it came from.
    pub file: PathBuf,
    session: Map<String, Value>,
    bool_true: String,
    bool_false: String,
    methods: Vec<Method>,
    poll: Vec<(String, Template, ReplyFormat)>,
    sim: Option<crate::sim::toml::SimSection>,
}

fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => json!(f),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

impl DriverDef {
    /// Parse and check one driver file's text. Errors name `file` and the key.
    pub fn parse(file: &Path, text: &str) -> Result<DriverDef, DriverError> {
        let f = file.display();
        let err = |key: &str, why: String| DriverError::Config(format!("{f}: {key}: {why}"));
        let raw: FileDef =
            toml::from_str(text).map_err(|e| DriverError::Config(format!("{f}: {e}")))?;
        let name = raw.driver.name.trim().to_string();
        if name.is_empty() || name.chars().any(|c| c.is_whitespace()) {
            return Err(err(
                "driver.name",
                "must be a non-empty name without spaces".into(),
            ));
        }
        let session = match raw.session {
            Some(t) => match toml_to_json(toml::Value::Table(t)) {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            None => Map::new(),
        };
        SessionOptions::from_options(&session).map_err(|e| err("session", e.to_string()))?;
        let mut methods = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, m) in raw.methods.into_iter().enumerate() {
            let key = format!("methods[{i}] ({})", m.name);
            if m.name.is_empty() || !seen.insert(m.name.clone()) {
                return Err(err(
                    &key,
                    "method names must be non-empty and unique".into(),
                ));
            }
            let mut spec = MethodSpec::new(&m.name, &m.doc);
            let mut pnames = BTreeSet::new();
            for p in m.params {
                let pkey = format!("{key}.params.{}", p.name);
                if p.name.is_empty() || !pnames.insert(p.name.clone()) {
                    return Err(err(
                        &pkey,
                        "parameter names must be non-empty and unique".into(),
                    ));
                }
                if let (Some(lo), Some(hi)) = (p.min, p.max) {
                    if lo > hi {
                        return Err(err(&pkey, format!("min {lo} is above max {hi}")));
                    }
                }
                let ps = ParamSpec {
                    name: p.name.clone(),
                    ty: p.ty,
                    unit: p.unit,
                    min: p.min,
                    max: p.max,
                    default: None,
                    range_by: None,
                };
                let default = match p.default {
                    None => None,
                    Some(d) => {
                        // The default must pass the parameter's own checks.
                        let d = toml_to_json(d);
                        let one = MethodSpec::new("default", "").param(ps.clone());
                        let args = one
                            .bind(&json!({ p.name.clone(): d }))
                            .map_err(|e| err(&format!("{pkey}.default"), e.to_string()))?;
                        args.0.get(&p.name).cloned()
                    }
                };
                spec = spec.param(ParamSpec { default, ..ps });
            }
            if m.read_only {
                if m.write.is_some() {
                    return Err(err(&key, "a 'write' method cannot be read_only".into()));
                }
                spec = spec.read_only();
            }
            let action = match (m.write, m.query) {
                (Some(w), None) => {
                    if m.reply.is_some() {
                        return Err(err(&key, "'reply' only goes with 'query'".into()));
                    }
                    Action::Write {
                        cmd: Template::parse(&w).map_err(|e| err(&format!("{key}.write"), e))?,
                        opc: m.opc,
                    }
                }
                (None, Some(q)) => Action::Query {
                    cmd: Template::parse(&q).map_err(|e| err(&format!("{key}.query"), e))?,
                    reply: m.reply.unwrap_or(ReplyFormat::Raw),
                },
                _ => return Err(err(
                    &key,
                    "needs exactly one of 'write' (a command) or 'query' (a command with a reply)"
                        .into(),
                )),
            };
            let template = match &action {
                Action::Write { cmd, .. } | Action::Query { cmd, .. } => cmd,
            };
            for p in template.params() {
                if !pnames.contains(p) {
                    return Err(err(
                        &key,
                        format!("placeholder {{{p}}} is not one of its params"),
                    ));
                }
            }
            methods.push(Method { spec, action });
        }
        let mut poll = Vec::new();
        let mut pseen = BTreeSet::new();
        for (i, p) in raw.poll.into_iter().enumerate() {
            let key = format!("poll[{i}] ({})", p.name);
            if p.name.is_empty() || !pseen.insert(p.name.clone()) {
                return Err(err(&key, "poll names must be non-empty and unique".into()));
            }
            let t = Template::parse(&p.query).map_err(|e| err(&format!("{key}.query"), e))?;
            if let Some(ph) = t.params().next() {
                return Err(err(
                    &key,
                    format!("poll queries take no placeholders ({{{ph}}})"),
                ));
            }
            poll.push((p.name, t, p.reply.unwrap_or(ReplyFormat::Raw)));
        }
        Ok(DriverDef {
            name,
            description: raw.driver.description,
            file: file.to_path_buf(),
            session,
            bool_true: raw.driver.bool_true,
            bool_false: raw.driver.bool_false,
            methods,
            poll,
            sim: raw.sim,
        })
    }

    /// The file's `[sim]` section (how `labmesh sim toml` simulates it).
    pub fn sim_section(&self) -> Option<&crate::sim::toml::SimSection> {
        self.sim.as_ref()
    }

    /// How bool parameters are written: (true, false).
    pub fn bool_words(&self) -> (&str, &str) {
        (&self.bool_true, &self.bool_false)
    }

    /// Every command the file sends, for the TOML simulator: the template
    /// (placeholders as `{name}`), its method's spec (`None` for a poll
    /// query) and the reply format (`None` for a write).
    pub fn commands(&self) -> Vec<(String, Option<&MethodSpec>, Option<ReplyFormat>)> {
        let text = |t: &Template| {
            t.0.iter()
                .map(|s| match s {
                    Segment::Text(t) => t.clone(),
                    Segment::Param(p) => format!("{{{p}}}"),
                })
                .collect::<String>()
        };
        let mut out = Vec::new();
        for m in &self.methods {
            match &m.action {
                Action::Write { cmd, .. } => out.push((text(cmd), Some(&m.spec), None)),
                Action::Query { cmd, reply } => out.push((text(cmd), Some(&m.spec), Some(*reply))),
            }
        }
        for (_, t, reply) in &self.poll {
            out.push((text(t), None, Some(*reply)));
        }
        out
    }

    /// Read and parse one file.
    pub fn load(file: &Path) -> Result<DriverDef, DriverError> {
        let text = std::fs::read_to_string(file).map_err(|source| DriverError::ReadConfig {
            path: file.to_path_buf(),
            source,
        })?;
        DriverDef::parse(file, &text)
    }
}

/// Parse every `*.toml` file in `dir` (sorted by name). All must be valid,
/// and names unique, or nothing is returned.
pub fn load_dir(dir: &Path) -> Result<Vec<DriverDef>, DriverError> {
    let unreadable = |source| DriverError::ReadConfig {
        path: dir.to_path_buf(),
        source,
    };
    let entries = std::fs::read_dir(dir).map_err(unreadable)?;
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(unreadable)?;
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut defs: Vec<DriverDef> = Vec::new();
    for f in files {
        let def = DriverDef::load(&f)?;
        if let Some(other) = defs.iter().find(|d| d.name == def.name) {
            return Err(DriverError::Config(format!(
                "{}: driver.name: '{}' is already defined by {}",
                f.display(),
                def.name,
                other.file.display()
            )));
        }
        defs.push(def);
    }
    Ok(defs)
}

/// An instrument driven by a [`DriverDef`].
#[derive(Debug)]
pub struct DeclarativeDriver {
    id: String,
    def: Arc<DriverDef>,
    session: ScpiSession,
}

impl DeclarativeDriver {
    /// Build from config: the file's `[session]` table, then the
    /// instrument's options on top. `identify` defaults to true (`*IDN?`
    /// whenever the link opens).
    pub fn from_config(def: Arc<DriverDef>, cfg: &InstrumentConfig) -> Result<Self, DriverError> {
        let mut defaults = SessionOptions {
            identify: true,
            ..SessionOptions::default()
        };
        defaults.apply_options(&def.session)?;
        let session = ScpiSession::from_config(cfg, defaults)?;
        Ok(DeclarativeDriver {
            id: cfg.id.clone(),
            def,
            session,
        })
    }

    async fn run_query(&mut self, cmd: &str, reply: ReplyFormat) -> Result<Value, DriverError> {
        if reply == ReplyFormat::Block {
            let data = self.session.query_binary(cmd).await?;
            return Ok(json!(base64::engine::general_purpose::STANDARD.encode(data)));
        }
        let r = self.session.query(cmd).await?;
        parse_reply(&r, reply).ok_or_else(|| {
            DriverError::Instrument(format!("{cmd}: cannot read {r:?} as {reply:?}"))
        })
    }

    async fn state(&mut self) -> Result<Value, DriverError> {
        let mut out = Map::new();
        out.insert("relay_id".into(), json!(self.id));
        out.insert("driver".into(), json!(self.def.name));
        let def = self.def.clone();
        for (name, t, reply) in &def.poll {
            let cmd = t.render(&Args::default(), &def)?;
            out.insert(name.clone(), self.run_query(&cmd, *reply).await?);
        }
        out.insert("connected".into(), json!(self.session.is_connected()));
        Ok(Value::Object(out))
    }
}

/// Parse a reply line as `reply` says; `None` if it does not fit.
pub fn parse_reply(r: &str, reply: ReplyFormat) -> Option<Value> {
    let t = r.trim();
    let unq = t.trim_matches('"');
    let num = |s: &str| s.trim().parse::<f64>().ok().filter(|f| f.is_finite());
    Some(match reply {
        ReplyFormat::Raw => json!(r),
        ReplyFormat::String => json!(unq),
        ReplyFormat::Float => json!(num(unq)?),
        ReplyFormat::Int => match unq.trim_start_matches('+').parse::<i64>() {
            Ok(i) => json!(i),
            Err(_) => {
                let f = num(unq)?;
                if f.fract() != 0.0 || f.abs() > 9.0e15 {
                    return None;
                }
                json!(f as i64)
            }
        },
        ReplyFormat::Bool => match unq.to_ascii_uppercase().as_str() {
            "1" | "+1" | "ON" | "TRUE" => json!(true),
            "0" | "+0" | "OFF" | "FALSE" => json!(false),
            _ => return None,
        },
        ReplyFormat::Floats => {
            if unq.is_empty() {
                json!([])
            } else {
                Value::Array(
                    unq.split(',')
                        .map(|s| num(s).map(|f| json!(f)))
                        .collect::<Option<Vec<_>>>()?,
                )
            }
        }
        ReplyFormat::Block => return None,
    })
}

/// Methods every declarative driver gets unless its file defines one of
/// the same name: one table for `describe()` and `call()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Builtin {
    Identify,
    GetState,
}

impl MethodTable for Builtin {
    const ALL: &'static [Builtin] = &[Builtin::Identify, Builtin::GetState];

    fn name(self) -> &'static str {
        match self {
            Builtin::Identify => "identify",
            Builtin::GetState => "get_state",
        }
    }
}

impl Builtin {
    fn spec(self) -> MethodSpec {
        let doc = match self {
            Builtin::Identify => "The *IDN? string",
            Builtin::GetState => "The poll queries' values",
        };
        MethodSpec::new(self.name(), doc).read_only()
    }
}

#[async_trait::async_trait]
impl Instrument for DeclarativeDriver {
    fn identity(&self) -> Option<String> {
        self.session.identity().map(str::to_string)
    }

    fn describe(&self) -> Description {
        let mut methods: Vec<MethodSpec> =
            self.def.methods.iter().map(|m| m.spec.clone()).collect();
        for b in Builtin::ALL {
            if !methods.iter().any(|m| m.name == b.name()) {
                methods.push(b.spec());
            }
        }
        Description {
            state_fields: Vec::new(),
            driver: self.def.name.clone(),
            identity: self.session.identity().map(str::to_string),
            methods,
        }
    }

    async fn call(&mut self, method: &str, args: Args) -> Result<Value, DriverError> {
        let def = self.def.clone();
        let Some(m) = def.methods.iter().find(|m| m.spec.name == method) else {
            return match Builtin::from_name(method) {
                Some(Builtin::Identify) => Ok(json!(self.session.idn().await?)),
                Some(Builtin::GetState) => self.state().await,
                None => Err(DriverError::UnknownMethod(method.to_string())),
            };
        };
        match &m.action {
            Action::Write { cmd, opc } => {
                let text = cmd.render(&args, &def)?;
                self.session.write(&text).await?;
                if *opc {
                    self.session.opc().await?;
                }
                Ok(json!({"ok": true}))
            }
            Action::Query { cmd, reply } => {
                let text = cmd.render(&args, &def)?;
                self.run_query(&text, *reply).await
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_queries_are_declared_and_writes_cannot_be() {
        let file = Path::new("sim.toml");
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../instruments/labmesh-sim-psu.toml"),
        )
        .unwrap();
        let def = DriverDef::parse(file, &text).unwrap();
        let ro = |name: &str| {
            def.methods
                .iter()
                .find(|m| m.spec.name == name)
                .map(|m| m.spec.read_only)
        };
        assert_eq!(ro("measure_voltage"), Some(true));
        assert_eq!(ro("set_voltage"), Some(false));
        let bad =
            "[driver]\nname = \"x\"\n[[methods]]\nname = \"m\"\nwrite = \"X\"\nread_only = true\n";
        let e = DriverDef::parse(file, bad).unwrap_err().to_string();
        assert!(e.contains("cannot be read_only"), "{e}");
    }

    #[test]
    fn templates() {
        let t = Template::parse("VOLT {value};:OUTP {on} {{x}}").unwrap();
        assert_eq!(t.params().collect::<Vec<_>>(), ["value", "on"]);
        for bad in ["VOLT {value", "VOLT {}", "VOLT }"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replies() {
        let table: &[(&str, ReplyFormat, Option<Value>)] = &[
            ("+5.00000000E+00", ReplyFormat::Float, Some(json!(5.0))),
            ("5.000\r", ReplyFormat::Float, Some(json!(5.0))),
            ("nan", ReplyFormat::Float, None),
            ("abc", ReplyFormat::Float, None),
            ("+3", ReplyFormat::Int, Some(json!(3))),
            ("+3.00000000E+00", ReplyFormat::Int, Some(json!(3))),
            ("3.5", ReplyFormat::Int, None),
            ("ON", ReplyFormat::Bool, Some(json!(true))),
            ("0", ReplyFormat::Bool, Some(json!(false))),
            ("maybe", ReplyFormat::Bool, None),
            ("\"hello\"", ReplyFormat::String, Some(json!("hello"))),
            (
                "1,2.5,-3E-1",
                ReplyFormat::Floats,
                Some(json!([1.0, 2.5, -0.3])),
            ),
            ("1,x", ReplyFormat::Floats, None),
            (" raw ", ReplyFormat::Raw, Some(json!(" raw "))),
        ];
        for (r, kind, want) in table {
            assert_eq!(parse_reply(r, *kind), *want, "{r:?} as {kind:?}");
        }
    }
}
