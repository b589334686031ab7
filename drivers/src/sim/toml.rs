//! A simulator derived from a declarative TOML SCPI driver file
//! (`labmesh sim toml FILE`): test a driver before the instrument arrives.
//!
//! Every command template of the file (methods and polls) is split into
//! its message units (`INST:NSEL {channel};:VOLT {value}` is two) and
//! becomes what the simulator understands:
//!
//! * a unit with a placeholder argument is a **setting**: the value is
//!   checked against the parameter's type and range (`-104 Data type
//!   error`, `-222 Data out of range`, `-224 Illegal parameter value`,
//!   `-109 Missing parameter`) and remembered; `HEADER?` reads it back.
//!   `MIN`, `MAX` and `DEF` are accepted for numbers, and a unit suffix
//!   after the number (`5V`, `100mA` is not scaled: write plain numbers).
//! * in a template of several units, the units before the last are
//!   **selectors** (a channel, a function): settings are remembered per
//!   selector value, so `INST:NSEL 2;:VOLT 5` and `INST:NSEL 1;:VOLT 3`
//!   are two setpoints.
//! * a unit with fixed text (`DISP:TEXT:CLE`, `*RST`) is a **command**:
//!   accepted; `-108 Parameter not allowed` if it gets an argument it
//!   does not take.
//! * a **query** (`READ?`, `MEAS:VOLT?`) answers, in this order: a fixed
//!   reply from `[sim.replies]`, a model from `[sim.measure]`, the
//!   setting of the same header (read-back), for `MEAS:X?` the setting
//!   `X` (measured = setpoint), or a zero of its reply format.
//!
//! Anything else is `-113 Undefined header`. IEEE 488.2 common commands
//! (`*IDN?` from `[sim] idn`, `*RST`, `*CLS`, `*OPC?`, `*ESR?`, `*STB?`,
//! ...) and `SYST:ERR?` (a 20-entry queue, `-350 Queue overflow`) are
//! built in. Headers match as written in the file (case-insensitive; long
//! and short forms are not expanded).
//!
//! ```toml
//! [sim]
//! idn = "Keysight Technologies,34461A,SIM0001,A.03.01"
//! [sim.replies]
//! "CONF?" = '"VOLT +1.000000E+01,+3.000000E-06"'
//! [sim.measure]
//! "READ?" = 1.2345                                   # fixed
//! "MEAS:VOLT?" = "VOLT"                              # = the VOLT setting
//! "MEAS:CURR?" = { setting = "VOLT", scale = 0.1 }   # VOLT / 10 Ω
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::backend::{Refused, ScpiBackend, SimLock};
use crate::declarative::{DriverDef, ReplyFormat};
use crate::{DriverError, ParamSpec, ParamType};

/// The `[sim]` section of a TOML driver file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSection {
    /// The `*IDN?` answer (default `labmesh,<driver name>,SIM000001,1.0`).
    #[serde(default)]
    pub idn: Option<String>,
    /// Fixed replies: query (`"READ?"`) -> the reply text.
    #[serde(default)]
    pub replies: BTreeMap<String, String>,
    /// Measured values: query -> a model.
    #[serde(default)]
    pub measure: BTreeMap<String, Measure>,
}

/// How a query's value is made.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Measure {
    /// A fixed number.
    Fixed(f64),
    /// The value of a setting (`"VOLT"`), in the present selector context.
    Setting(String),
    /// A setting times `scale` (a current through a resistive load:
    /// `{ setting = "VOLT", scale = 0.1 }` for 10 Ω).
    Scaled {
        /// The setting's header.
        setting: String,
        /// The factor.
        scale: f64,
    },
}

/// Longest error queue (then `-350 Queue overflow`).
const ERROR_QUEUE: usize = 20;

#[derive(Debug, Clone)]
enum Arg {
    /// A literal argument (`DEF`, `(@1:3)`).
    Literal(String),
    /// A placeholder: its parameter.
    Param(ParamSpec),
}

#[derive(Debug, Clone)]
struct Unit {
    args: Vec<Arg>,
    reply: Option<ReplyFormat>,
}

#[derive(Debug, Clone, PartialEq)]
enum Setting {
    Number(f64),
    Bool(bool),
    Text(String),
}

impl Setting {
    fn reply(&self) -> String {
        match self {
            Setting::Number(v) => fmt_number(*v),
            Setting::Bool(b) => u8::from(*b).to_string(),
            Setting::Text(t) => format!("\"{t}\""),
        }
    }
    fn number(&self) -> f64 {
        match self {
            Setting::Number(v) => *v,
            Setting::Bool(b) => f64::from(u8::from(*b)),
            Setting::Text(t) => t.trim().parse().unwrap_or(0.0),
        }
    }
}

/// SCPI NR3 as Keysight writes it: `+5.000000E+00`.
fn fmt_number(v: f64) -> String {
    let s = format!("{v:+.6E}");
    match s.split_once('E') {
        Some((m, e)) => {
            let (sign, digits) = match e.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', e),
            };
            format!("{m}E{sign}{digits:0>2}")
        }
        None => s,
    }
}

fn normalise(header: &str) -> String {
    header.trim().trim_start_matches(':').to_ascii_uppercase()
}

/// Split at `sep` outside double quotes.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            out.push(s.get(start..i).unwrap_or_default());
            start = i + c.len_utf8();
        }
    }
    out.push(s.get(start..).unwrap_or_default());
    out
}

fn header_and_args(unit: &str) -> (&str, &str) {
    let unit = unit.trim();
    match unit.find(char::is_whitespace) {
        Some(i) => (
            unit.get(..i).unwrap_or_default(),
            unit.get(i..).unwrap_or_default().trim(),
        ),
        None => (unit, ""),
    }
}

/// The instrument model a driver file implies.
#[derive(Debug)]
struct Model {
    idn: String,
    /// Write units by header (the first definition wins).
    writes: BTreeMap<String, Unit>,
    /// Query units by header (with `?`).
    queries: BTreeMap<String, Unit>,
    /// Headers that select a context.
    selectors: Vec<String>,
    sim: SimSection,
    bool_words: (String, String),
}

#[derive(Debug, Default)]
struct State {
    settings: BTreeMap<String, Setting>,
    context: BTreeMap<String, Setting>,
    errors: VecDeque<i32>,
    esr: u8,
}

fn error_text(code: i32) -> &'static str {
    match code {
        -100 => "Command error",
        -104 => "Data type error",
        -108 => "Parameter not allowed",
        -109 => "Missing parameter",
        -113 => "Undefined header",
        -222 => "Data out of range",
        -224 => "Illegal parameter value",
        -350 => "Queue overflow",
        _ => "Error",
    }
}

impl State {
    fn push_error(&mut self, code: i32) {
        // ESR: command errors (-1xx) bit 5, execution errors (-2xx) bit 4.
        self.esr |= if (-199..=-100).contains(&code) {
            0x20
        } else if (-299..=-200).contains(&code) {
            0x10
        } else {
            0x08
        };
        match self.errors.len() {
            n if n + 1 < ERROR_QUEUE => self.errors.push_back(code),
            n if n + 1 == ERROR_QUEUE => self.errors.push_back(-350),
            _ => {}
        }
    }

    fn key(&self, header: &str) -> String {
        let mut k = header.to_string();
        for (h, v) in &self.context {
            k.push('|');
            k.push_str(h);
            k.push('=');
            k.push_str(&v.reply());
        }
        k
    }
}

/// A simulated instrument built from a TOML driver file.
#[derive(Debug, Clone)]
pub struct TomlSim {
    model: Arc<Model>,
    state: Arc<Mutex<State>>,
    lock: Arc<SimLock>,
    next_session: Arc<AtomicU32>,
}

impl TomlSim {
    /// The simulator for a loaded driver definition.
    pub fn new(def: &DriverDef) -> TomlSim {
        let mut writes = BTreeMap::new();
        let mut queries = BTreeMap::new();
        let mut selectors = Vec::new();
        for (template, spec, reply) in def.commands() {
            let units = split_outside_quotes(&template, ';');
            let n = units.len();
            for (i, text) in units.into_iter().enumerate() {
                let (header, args) = header_and_args(text);
                if header.is_empty() {
                    continue;
                }
                let header = normalise(header);
                let args: Vec<Arg> = if args.is_empty() {
                    Vec::new()
                } else {
                    split_outside_quotes(args, ',')
                        .into_iter()
                        .map(|a| {
                            let a = a.trim();
                            let name = a
                                .trim_matches('"')
                                .strip_prefix('{')
                                .and_then(|x| x.strip_suffix('}'));
                            match name.and_then(|name| {
                                spec.and_then(|s| s.params.iter().find(|p| p.name == name))
                            }) {
                                Some(p) => Arg::Param(p.clone()),
                                None => Arg::Literal(a.to_ascii_uppercase()),
                            }
                        })
                        .collect()
                };
                let is_query = header.ends_with('?');
                let unit = Unit {
                    args,
                    reply: if i + 1 == n { reply } else { None },
                };
                if is_query {
                    queries.entry(header).or_insert(unit);
                } else {
                    if i + 1 < n
                        && unit.args.iter().any(|a| matches!(a, Arg::Param(_)))
                        && !selectors.contains(&header)
                    {
                        selectors.push(header.clone());
                    }
                    writes.entry(header).or_insert(unit);
                }
            }
        }
        let sim = def.sim_section().cloned().unwrap_or_default();
        let idn = sim
            .idn
            .clone()
            .unwrap_or_else(|| format!("labmesh,{},SIM000001,1.0", def.name));
        let (t, f) = def.bool_words();
        TomlSim {
            model: Arc::new(Model {
                idn,
                writes,
                queries,
                selectors,
                sim,
                bool_words: (t.to_ascii_uppercase(), f.to_ascii_uppercase()),
            }),
            state: Arc::default(),
            lock: Arc::default(),
            next_session: Arc::new(AtomicU32::new(1)),
        }
    }

    /// Load `file` (a TOML driver) and build its simulator.
    pub fn load(file: &Path) -> Result<TomlSim, DriverError> {
        Ok(TomlSim::new(&DriverDef::load(file)?))
    }

    /// The `*IDN?` answer.
    pub fn idn(&self) -> &str {
        &self.model.idn
    }

    /// Headers it accepts as settings, commands and queries (sorted), for
    /// the banner and tests.
    pub fn headers(&self) -> Vec<String> {
        self.model
            .writes
            .keys()
            .chain(self.model.queries.keys())
            .cloned()
            .collect()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of entries in the error queue.
    pub fn error_count(&self) -> usize {
        self.state().errors.len()
    }

    /// Execute one program message: the reply (units' answers joined by
    /// `;`), or `None` if nothing in it answers.
    pub fn execute(&self, line: &str) -> Option<Vec<u8>> {
        let mut st = self.state();
        let mut answers: Vec<String> = Vec::new();
        for unit in split_outside_quotes(line, ';') {
            let (header, args) = header_and_args(unit);
            if header.is_empty() {
                continue;
            }
            let header = normalise(header);
            if !header
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '*' | '?' | '_'))
            {
                // Malformed header: a command error aborts the rest.
                st.push_error(-100);
                break;
            }
            if let Some(a) = self.unit(&mut st, &header, args) {
                answers.push(a);
            }
        }
        (!answers.is_empty()).then(|| answers.join(";").into_bytes())
    }

    fn unit(&self, st: &mut State, header: &str, args: &str) -> Option<String> {
        let m = &self.model;
        match header {
            "*IDN?" => return Some(m.idn.clone()),
            "*RST" => {
                st.settings.clear();
                st.context.clear();
                return None;
            }
            "*CLS" => {
                st.errors.clear();
                st.esr = 0;
                return None;
            }
            "*OPC?" => return Some("1".into()),
            "*TST?" => return Some("0".into()),
            "*ESR?" => return Some(std::mem::take(&mut st.esr).to_string()),
            "*STB?" => {
                let mut stb = 0u8;
                if !st.errors.is_empty() {
                    stb |= 0x04;
                }
                if st.esr != 0 {
                    stb |= 0x20;
                }
                return Some(stb.to_string());
            }
            "*OPC" | "*WAI" | "*ESE" | "*SRE" | "*TRG" => return None,
            "*ESE?" | "*SRE?" => return Some("0".into()),
            "SYST:ERR?" | "SYST:ERR:NEXT?" | "SYSTEM:ERROR?" | "SYSTEM:ERROR:NEXT?" => {
                return Some(match st.errors.pop_front() {
                    None => "0,\"No error\"".into(),
                    Some(c) => format!("{c},\"{}\"", error_text(c)),
                });
            }
            "SYST:ERR:COUN?" | "SYSTEM:ERROR:COUNT?" => return Some(st.errors.len().to_string()),
            _ => {}
        }
        if header.ends_with('?') {
            return self.query(st, header);
        }
        let Some(unit) = m.writes.get(header) else {
            st.push_error(-113);
            return None;
        };
        let given: Vec<&str> = if args.trim().is_empty() {
            Vec::new()
        } else {
            split_outside_quotes(args, ',')
        };
        if given.len() > unit.args.len() {
            st.push_error(-108);
            return None;
        }
        if given.len() < unit.args.len() {
            st.push_error(-109);
            return None;
        }
        let mut values: Vec<Setting> = Vec::new();
        for (a, g) in unit.args.iter().zip(&given) {
            match a {
                Arg::Literal(_) => values.push(Setting::Text(g.trim().to_string())),
                Arg::Param(p) => match self.value(p, g) {
                    Ok(v) => values.push(v),
                    Err(code) => {
                        st.push_error(code);
                        return None;
                    }
                },
            }
        }
        let value = match values.as_slice() {
            [] => return None,
            [one] => one.clone(),
            many => Setting::Text(
                many.iter()
                    .map(Setting::reply)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        };
        if m.selectors.iter().any(|s| s == header) {
            st.context.insert(header.to_string(), value);
        } else {
            let key = st.key(header);
            st.settings.insert(key, value);
        }
        None
    }

    /// Check one argument against its parameter.
    fn value(&self, p: &ParamSpec, given: &str) -> Result<Setting, i32> {
        let g = given.trim();
        let upper = g.to_ascii_uppercase();
        match p.ty {
            ParamType::Float | ParamType::Int => {
                let v = match upper.as_str() {
                    "MIN" | "MINIMUM" => p.min.unwrap_or(0.0),
                    "MAX" | "MAXIMUM" => p.max.unwrap_or(0.0),
                    "DEF" | "DEFAULT" => p.default.as_ref().and_then(Value::as_f64).unwrap_or(0.0),
                    _ => {
                        // A number, perhaps followed by a unit suffix.
                        let end = g
                            .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
                            .unwrap_or(g.len());
                        let num = g.get(..end).unwrap_or_default().trim();
                        let suffix = g.get(end..).unwrap_or_default().trim();
                        let unit_ok = suffix.is_empty()
                            || p.unit
                                .as_deref()
                                .is_some_and(|u| u.eq_ignore_ascii_case(suffix));
                        match num.parse::<f64>() {
                            Ok(v) if v.is_finite() && unit_ok => v,
                            _ => return Err(-104),
                        }
                    }
                };
                if p.min.is_some_and(|lo| v < lo) || p.max.is_some_and(|hi| v > hi) {
                    return Err(-222);
                }
                Ok(Setting::Number(if p.ty == ParamType::Int {
                    v.round()
                } else {
                    v
                }))
            }
            ParamType::Bool => {
                let (t, f) = &self.model.bool_words;
                match upper.as_str() {
                    "1" | "ON" | "TRUE" => Ok(Setting::Bool(true)),
                    "0" | "OFF" | "FALSE" => Ok(Setting::Bool(false)),
                    w if w == t => Ok(Setting::Bool(true)),
                    w if w == f => Ok(Setting::Bool(false)),
                    _ => Err(-224),
                }
            }
            ParamType::String | ParamType::Any => {
                Ok(Setting::Text(g.trim_matches('"').to_string()))
            }
        }
    }

    /// The stored or default value of setting `header` in this context.
    fn setting(&self, st: &State, header: &str) -> Option<Setting> {
        if let Some(v) = st.settings.get(&st.key(header)) {
            return Some(v.clone());
        }
        if let Some(v) = st.context.get(header) {
            return Some(v.clone());
        }
        let unit = self.model.writes.get(header)?;
        let defaults: Vec<Setting> = unit
            .args
            .iter()
            .map(|a| match a {
                Arg::Literal(l) => Setting::Text(l.clone()),
                Arg::Param(p) => match (&p.default, p.ty) {
                    (Some(Value::Bool(b)), _) => Setting::Bool(*b),
                    (Some(Value::String(s)), _) => Setting::Text(s.clone()),
                    (Some(v), _) => Setting::Number(v.as_f64().unwrap_or(0.0)),
                    (None, ParamType::Bool) => Setting::Bool(false),
                    (None, ParamType::String | ParamType::Any) => Setting::Text(String::new()),
                    (None, _) => Setting::Number(0.0),
                },
            })
            .collect();
        match defaults.as_slice() {
            [] => None,
            [one] => Some(one.clone()),
            many => Some(Setting::Text(
                many.iter()
                    .map(Setting::reply)
                    .collect::<Vec<_>>()
                    .join(","),
            )),
        }
    }

    fn query(&self, st: &mut State, header: &str) -> Option<String> {
        let m = &self.model;
        if let Some(r) = m.sim.replies.get(header) {
            return Some(r.clone());
        }
        let base = header.trim_end_matches('?');
        if let Some(model) = m.sim.measure.get(header) {
            let v = match model {
                Measure::Fixed(v) => *v,
                Measure::Setting(s) => self.setting(st, &normalise(s)).map_or(0.0, |v| v.number()),
                Measure::Scaled { setting, scale } => {
                    self.setting(st, &normalise(setting))
                        .map_or(0.0, |v| v.number())
                        * scale
                }
            };
            return Some(fmt_number(v));
        }
        if m.writes.contains_key(base) {
            return self.setting(st, base).map(|v| v.reply());
        }
        let measured = base
            .strip_prefix("MEAS:")
            .or_else(|| base.strip_prefix("MEASURE:"))
            .filter(|s| m.writes.contains_key(*s));
        if let Some(s) = measured {
            let v = self.setting(st, s).map_or(0.0, |v| v.number());
            return Some(fmt_number(v));
        }
        match m.queries.get(header) {
            Some(q) => Some(
                match q.reply {
                    Some(ReplyFormat::String) => "\"\"",
                    Some(ReplyFormat::Block) => "#10",
                    Some(ReplyFormat::Bool) | Some(ReplyFormat::Int) => "0",
                    _ => "+0.000000E+00",
                }
                .to_string(),
            ),
            None => {
                st.push_error(-113);
                None
            }
        }
    }
}

#[async_trait::async_trait]
impl ScpiBackend for TomlSim {
    async fn execute(&self, _session: u32, message: &str) -> Result<Option<Vec<u8>>, Refused> {
        Ok(TomlSim::execute(self, message))
    }

    fn message_too_long(&self) {
        self.state().push_error(-100);
    }

    fn next_session(&self) -> u32 {
        loop {
            let id = self.next_session.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    async fn lock(&self, session: u32, wait: Duration) -> bool {
        self.lock.lock(session, wait).await
    }

    async fn wait_free(&self, session: u32, wait: Duration) -> bool {
        self.lock.wait_free(session, wait).await
    }

    async fn unlock(&self, session: u32) -> bool {
        self.lock.unlock(session)
    }

    async fn is_locked(&self) -> bool {
        self.lock.is_locked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PSU: &str = include_str!("../../../instruments/labmesh-sim-psu.toml");
    const DMM: &str = include_str!("../../../instruments/keysight-34461a.toml");

    fn sim(text: &str) -> TomlSim {
        TomlSim::new(&DriverDef::parse(Path::new("x.toml"), text).unwrap())
    }

    fn ask(s: &TomlSim, line: &str) -> String {
        String::from_utf8(s.execute(line).unwrap_or_default()).unwrap()
    }

    #[test]
    fn setpoints_per_selector_ranges_and_error_queue() {
        let s = sim(PSU);
        assert_eq!(s.idn(), "labmesh,labmesh-sim-psu,SIM000001,1.0");
        assert!(s.execute("INST:NSEL 2;:VOLT 5").is_none());
        assert!(s.execute("INST:NSEL 1;:VOLT 3.25").is_none());
        assert_eq!(ask(&s, "INST:NSEL 2;:VOLT?"), "+5.000000E+00");
        assert_eq!(ask(&s, "INST:NSEL 1;:MEAS:VOLT?"), "+3.250000E+00");
        // Range from the file's params: 0..=25 V, channel 1..=3.
        assert!(s.execute("VOLT 26").is_none());
        assert!(s.execute("INST:NSEL 4").is_none());
        assert!(s.execute("VOLT abc").is_none());
        assert!(s.execute("VOLT").is_none());
        assert!(s.execute("BOGUS 1").is_none());
        assert_eq!(ask(&s, "*STB?"), "36");
        assert_eq!(ask(&s, "SYST:ERR?"), "-222,\"Data out of range\"");
        assert_eq!(ask(&s, "SYST:ERR?"), "-222,\"Data out of range\"");
        assert_eq!(ask(&s, "SYST:ERR?"), "-104,\"Data type error\"");
        assert_eq!(ask(&s, "SYST:ERR?"), "-109,\"Missing parameter\"");
        assert_eq!(ask(&s, "SYST:ERR?"), "-113,\"Undefined header\"");
        assert_eq!(ask(&s, "SYST:ERR?"), "0,\"No error\"");
        // The rejected value did not change the setpoint.
        assert_eq!(ask(&s, "INST:NSEL 1;:VOLT?"), "+3.250000E+00");
        // Bools as the file writes them; *RST forgets setpoints.
        assert!(s.execute("OUTP ON").is_none());
        assert_eq!(ask(&s, "OUTP?"), "1");
        s.execute("*RST");
        assert_eq!(ask(&s, "INST:NSEL 1;:VOLT?"), "+0.000000E+00");
        for _ in 0..30 {
            s.execute("NOPE");
        }
        assert_eq!(s.error_count(), ERROR_QUEUE);
        for _ in 0..19 {
            assert_eq!(ask(&s, "SYST:ERR?"), "-113,\"Undefined header\"");
        }
        assert_eq!(ask(&s, "SYST:ERR?"), "-350,\"Queue overflow\"");
    }

    #[test]
    fn sim_section_fixed_replies_and_models() {
        // The shipped DMM file's own [sim] section.
        let s = sim(DMM);
        assert!(ask(&s, "*IDN?").starts_with("Keysight Technologies,34461A,SIM34461A,"));
        assert_eq!(ask(&s, "CONF?"), "\"VOLT +1.000000E+01,+3.000000E-06\"");
        assert_eq!(ask(&s, "READ?"), "+1.234500E+00");
        assert_eq!(ask(&s, "MEAS:RES?"), "+4.700000E+03");
        // Defaults before a set; a range below min is refused.
        assert_eq!(ask(&s, "SAMP:COUN?"), "+0.000000E+00");
        s.execute("CONF:VOLT:DC 0.01");
        assert_eq!(ask(&s, "SYST:ERR?"), "-222,\"Data out of range\"");
        assert_eq!(ask(&s, "CONF:VOLT:DC?"), "+1.000000E+01");
        s.execute("DISP:TEXT \"hello\"");
        assert_eq!(ask(&s, "DISP:TEXT?"), "\"hello\"");
        s.execute("DISP:TEXT:CLE 5");
        assert_eq!(ask(&s, "SYST:ERR?"), "-108,\"Parameter not allowed\"");
        // A load model: current = the voltage setting x 0.1 (10 ohms).
        let load = r#"
[driver]
name = "load"
[[methods]]
name = "set_voltage"
write = "VOLT {v}"
params = [{ name = "v", type = "float", unit = "V", min = 0, max = 30 }]
[sim.measure]
"MEAS:CURR?" = { setting = "VOLT", scale = 0.1 }
"MEAS:VOLT?" = "VOLT"
"#;
        let s = sim(load);
        s.execute("VOLT 12V");
        assert_eq!(
            ask(&s, "MEAS:CURR?;MEAS:VOLT?"),
            "+1.200000E+00;+1.200000E+01"
        );
        s.execute("VOLT 12A");
        assert_eq!(ask(&s, "SYST:ERR?"), "-104,\"Data type error\"");
        // Unknown keys in [sim] are errors, as everywhere in the file.
        let bad = "[driver]\nname = \"x\"\n[sim]\nidm = \"x\"\n";
        assert!(DriverDef::parse(Path::new("x.toml"), bad).is_err());
    }
}
