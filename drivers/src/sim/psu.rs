//! The simulated PSU's instrument model: channels, load model, error queue,
//! status bytes, and the three dialects' command trees.

use std::collections::VecDeque;
use std::sync::OnceLock;

use super::parser::{self, Pattern, Unit};
use crate::psu::models::{Family, PsuModel};

/// SCPI error queue depth (Keysight E36300: 20).
pub const ERROR_QUEUE_LEN: usize = 20;

/// The commands the simulator knows, matched in one place ([`PsuState::unit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Volt,
    Curr,
    Outp,
    MeasVolt,
    MeasCurr,
    MeasPow,
    MeasAll,
    Appl,
    InstNsel,
    InstSel,
    SystErr,
    SystVers,
    SystStat,
    Screenshot,
    Waveform,
}

fn tree(family: Family) -> &'static [(Pattern, Cmd)] {
    static KEYSIGHT: OnceLock<Vec<(Pattern, Cmd)>> = OnceLock::new();
    static RIGOL: OnceLock<Vec<(Pattern, Cmd)>> = OnceLock::new();
    static SIGLENT: OnceLock<Vec<(Pattern, Cmd)>> = OnceLock::new();
    let compile = |t: &[(&str, Cmd)]| -> Vec<(Pattern, Cmd)> {
        t.iter().map(|(p, c)| (Pattern::new(p), *c)).collect()
    };
    const COMMON: &[(&str, Cmd)] = &[
        ("SYSTem:ERRor[:NEXT]", Cmd::SystErr),
        ("SYSTem:VERSion", Cmd::SystVers),
        ("HCOPy:SDUMp:DATA", Cmd::Screenshot),
        ("WAVeform:DATA", Cmd::Waveform),
    ];
    match family {
        // Keysight E36300 Series Programming Guide (chapter "SCPI Command Reference").
        Family::KeysightE36xx => KEYSIGHT.get_or_init(|| {
            compile(
                &[
                    (
                        "[SOURce]:VOLTage[:LEVel][:IMMediate][:AMPLitude]",
                        Cmd::Volt,
                    ),
                    (
                        "[SOURce]:CURRent[:LEVel][:IMMediate][:AMPLitude]",
                        Cmd::Curr,
                    ),
                    ("OUTPut[:STATe]", Cmd::Outp),
                    ("MEASure[:SCALar]:VOLTage[:DC]", Cmd::MeasVolt),
                    ("MEASure[:SCALar]:CURRent[:DC]", Cmd::MeasCurr),
                    ("APPLy", Cmd::Appl),
                    ("INSTrument:NSELect", Cmd::InstNsel),
                    ("INSTrument[:SELect]", Cmd::InstSel),
                ]
                .iter()
                .chain(COMMON)
                .copied()
                .collect::<Vec<_>>(),
            )
        }),
        // Rigol DP800 Series Programming Guide.
        Family::RigolDp8xx => RIGOL.get_or_init(|| {
            compile(
                &[
                    (
                        "[SOURce#]:VOLTage[:LEVel][:IMMediate][:AMPLitude]",
                        Cmd::Volt,
                    ),
                    (
                        "[SOURce#]:CURRent[:LEVel][:IMMediate][:AMPLitude]",
                        Cmd::Curr,
                    ),
                    ("OUTPut[:STATe]", Cmd::Outp),
                    ("MEASure:ALL[:DC]", Cmd::MeasAll),
                    ("MEASure:CURRent[:DC]", Cmd::MeasCurr),
                    ("MEASure:POWEr[:DC]", Cmd::MeasPow),
                    ("MEASure[:VOLTage][:DC]", Cmd::MeasVolt),
                    ("APPLy", Cmd::Appl),
                    ("INSTrument:NSELect", Cmd::InstNsel),
                    ("INSTrument[:SELect]", Cmd::InstSel),
                ]
                .iter()
                .chain(COMMON)
                .copied()
                .collect::<Vec<_>>(),
            )
        }),
        // Siglent SPD3303X/X-E User Manual, "Remote control: command syntax".
        Family::SiglentSpd3303x => SIGLENT.get_or_init(|| {
            compile(
                &[
                    ("CH#:VOLTage", Cmd::Volt),
                    ("CH#:CURRent", Cmd::Curr),
                    ("OUTPut", Cmd::Outp),
                    ("MEASure:VOLTage", Cmd::MeasVolt),
                    ("MEASure:CURRent", Cmd::MeasCurr),
                    ("MEASure:POWEr", Cmd::MeasPow),
                    ("INSTrument", Cmd::InstSel),
                    ("SYSTem:STATus", Cmd::SystStat),
                ]
                .iter()
                .chain(COMMON)
                .copied()
                .collect::<Vec<_>>(),
            )
        }),
    }
}

/// Standard SCPI error messages used by the simulator.
pub fn error_text(code: i32) -> &'static str {
    match code {
        0 => "No error",
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

#[derive(Debug, Clone, Copy, PartialEq)]
struct Channel {
    volt: f64,
    curr: f64,
    on: bool,
}

/// One channel's measured values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Voltage at the terminals, V.
    pub voltage: f64,
    /// Current into the load, A.
    pub current: f64,
    /// In constant-current mode (the load wants more than the limit).
    pub cc: bool,
}

/// The instrument's state, shared by every client connection.
#[derive(Debug, Clone)]
pub struct PsuState {
    model: &'static PsuModel,
    serial: String,
    load_ohms: f64,
    ch: Vec<Channel>,
    selected: usize,
    errors: VecDeque<i32>,
    esr: u8,
    ese: u8,
    sre: u8,
}

type Res = Result<Option<Vec<u8>>, i32>;

impl PsuState {
    /// A supply of `model`, after `*RST`, with a resistive load of
    /// `load_ohms` on every output.
    pub fn new(model: &'static PsuModel, serial: &str, load_ohms: f64) -> Self {
        let mut s = PsuState {
            model,
            serial: serial.to_string(),
            load_ohms: if load_ohms > 0.0 && load_ohms.is_finite() {
                load_ohms
            } else {
                10.0
            },
            ch: Vec::new(),
            selected: 0,
            errors: VecDeque::new(),
            esr: 0,
            ese: 0,
            sre: 0,
        };
        s.reset();
        s
    }

    fn reset(&mut self) {
        self.ch = self
            .model
            .channels
            .iter()
            .map(|l| Channel {
                volt: 0.0,
                curr: l.max_current,
                on: false,
            })
            .collect();
        self.selected = 0;
    }

    /// `*IDN?` answer.
    pub fn idn(&self) -> String {
        let m = self.model.model;
        let s = &self.serial;
        match self.model.family {
            Family::KeysightE36xx => format!("Keysight Technologies,{m},{s},2.1.0-1.0.4-1.12"),
            Family::RigolDp8xx => format!("RIGOL TECHNOLOGIES,{m},{s},00.01.14"),
            Family::SiglentSpd3303x => format!("Siglent Technologies,{m},{s},1.01.01.02.05,V3.0"),
        }
    }

    /// The model simulated.
    pub fn model(&self) -> &'static PsuModel {
        self.model
    }

    /// Number of queued errors.
    pub fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// What channel `n` (0-based) measures under the load model: output off
    /// reads 0; on, the resistive load draws V/R unless that exceeds the
    /// current limit, when the supply goes CC and the voltage sags to I·R.
    pub fn reading(&self, n: usize) -> Reading {
        let Some(c) = self.ch.get(n) else {
            return Reading {
                voltage: 0.0,
                current: 0.0,
                cc: false,
            };
        };
        if !c.on {
            return Reading {
                voltage: 0.0,
                current: 0.0,
                cc: false,
            };
        }
        let want = c.volt / self.load_ohms;
        if want <= c.curr {
            Reading {
                voltage: c.volt,
                current: want,
                cc: false,
            }
        } else {
            Reading {
                voltage: c.curr * self.load_ohms,
                current: c.curr,
                cc: true,
            }
        }
    }

    pub(crate) fn push_error(&mut self, code: i32) {
        self.esr |= match code {
            -199..=-100 => 0x20,
            -299..=-200 => 0x10,
            -399..=-300 => 0x08,
            -499..=-400 => 0x04,
            _ => 0,
        };
        if self.errors.len() < ERROR_QUEUE_LEN - 1 {
            self.errors.push_back(code);
        } else if self.errors.len() == ERROR_QUEUE_LEN - 1 {
            self.errors.push_back(-350);
        }
        // Full: further errors are lost; the last entry stays -350.
    }

    /// Execute one program message (a line without its terminator). Returns
    /// the response message (query answers joined by `;`), if any query ran.
    /// Each program message starts at the root of the command tree.
    pub fn execute(&mut self, line: &str) -> Option<Vec<u8>> {
        let mut answers: Vec<Vec<u8>> = Vec::new();
        let mut path = Vec::new();
        for text in parser::split_units(line) {
            if text.trim().is_empty() {
                continue;
            }
            let result = match parser::parse_unit(text, &mut path) {
                Err(parser::SyntaxError::BadHeader) => Err(-100),
                Ok(unit) => self.unit(&unit),
            };
            match result {
                Ok(Some(a)) => answers.push(a),
                Ok(None) => {}
                Err(code) => {
                    self.push_error(code);
                    // IEEE 488.2: a command error aborts the rest of the message.
                    if code <= -100 && code > -200 {
                        break;
                    }
                }
            }
        }
        if answers.is_empty() {
            return None;
        }
        Some(answers.join(&b';'))
    }

    fn unit(&mut self, u: &Unit) -> Res {
        if let Some(name) = &u.common {
            return self.common(name, u);
        }
        let lookup = |tokens: &[String]| {
            let toks: Vec<&str> = tokens.iter().map(String::as_str).collect();
            tree(self.model.family)
                .iter()
                .find_map(|(p, c)| p.matches(&toks).map(|m| (*c, m)))
        };
        // The SCPI path rule first; then, leniently (as most firmware does),
        // the header as written from the root.
        let Some((cmd, m)) = lookup(&u.tokens).or_else(|| {
            if u.written.len() < u.tokens.len() {
                lookup(&u.written)
            } else {
                None
            }
        }) else {
            return Err(-113);
        };
        let fam = self.model.family;
        match cmd {
            Cmd::Volt | Cmd::Curr => self.level(cmd, u, m.suffix),
            Cmd::Outp => self.outp(u),
            Cmd::MeasVolt | Cmd::MeasCurr | Cmd::MeasPow | Cmd::MeasAll => {
                if !u.query {
                    return Err(-113);
                }
                let chans = self.chan_arg(u.params.first().map(String::as_str), 1, u)?;
                let vals: Vec<String> = chans
                    .iter()
                    .map(|&c| {
                        let r = self.reading(c);
                        match cmd {
                            Cmd::MeasVolt => self.num(r.voltage),
                            Cmd::MeasCurr => self.num(r.current),
                            Cmd::MeasPow => self.num(r.voltage * r.current),
                            _ => format!(
                                "{},{},{}",
                                self.num(r.voltage),
                                self.num(r.current),
                                self.num(r.voltage * r.current)
                            ),
                        }
                    })
                    .collect();
                Ok(Some(vals.join(",").into_bytes()))
            }
            Cmd::Appl => self.appl(u),
            Cmd::InstNsel => {
                if u.query {
                    no_params(u)?;
                    return Ok(Some((self.selected + 1).to_string().into_bytes()));
                }
                let p = one_param(u)?;
                let n: usize = p.parse().map_err(|_| -104)?;
                if n == 0 || n > self.ch.len() {
                    return Err(-222);
                }
                self.selected = n - 1;
                Ok(None)
            }
            Cmd::InstSel => {
                if u.query {
                    no_params(u)?;
                    let name = match fam {
                        Family::KeysightE36xx | Family::RigolDp8xx | Family::SiglentSpd3303x => {
                            format!("CH{}", self.selected + 1)
                        }
                    };
                    return Ok(Some(name.into_bytes()));
                }
                let p = one_param(u)?;
                self.selected = self.channel_name(p).ok_or(-224)?;
                Ok(None)
            }
            Cmd::SystErr => {
                if !u.query {
                    return Err(-113);
                }
                no_params(u)?;
                let code = self.errors.pop_front().unwrap_or(0);
                let text = error_text(code);
                let entry = match fam {
                    Family::KeysightE36xx => format!("{code:+},\"{text}\""),
                    _ => format!("{code},\"{text}\""),
                };
                Ok(Some(entry.into_bytes()))
            }
            Cmd::SystVers => {
                if !u.query {
                    return Err(-113);
                }
                Ok(Some(b"1999.0".to_vec()))
            }
            Cmd::SystStat => {
                if !u.query {
                    return Err(-113);
                }
                // SPD3303X: bit0/1 CH1/CH2 CC mode, bit 2-3 = 01 independent, bit4/5 CH1/CH2 on.
                let mut bits: u32 = 0b0100;
                for n in 0..self.ch.len().min(2) {
                    if self.reading(n).cc {
                        bits |= 1 << n;
                    }
                    if self.ch.get(n).is_some_and(|c| c.on) {
                        bits |= 1 << (4 + n);
                    }
                }
                Ok(Some(format!("0x{bits:X}").into_bytes()))
            }
            Cmd::Screenshot => {
                if !u.query {
                    return Err(-113);
                }
                Ok(Some(crate::block::encode(&screenshot())))
            }
            Cmd::Waveform => {
                if !u.query {
                    return Err(-113);
                }
                Ok(Some(crate::block::encode(waveform())))
            }
        }
    }

    fn common(&mut self, name: &str, u: &Unit) -> Res {
        let q = u.query;
        match (name, q) {
            ("IDN", true) => Ok(Some(self.idn().into_bytes())),
            ("RST", false) => {
                self.reset();
                Ok(None)
            }
            ("CLS", false) => {
                self.errors.clear();
                self.esr = 0;
                Ok(None)
            }
            ("OPC", true) => Ok(Some(b"1".to_vec())),
            ("OPC", false) => {
                self.esr |= 1;
                Ok(None)
            }
            ("WAI", false) => Ok(None),
            ("TST", true) => Ok(Some(b"0".to_vec())),
            ("ESR", true) => {
                let v = self.esr;
                self.esr = 0;
                Ok(Some(v.to_string().into_bytes()))
            }
            ("STB", true) => {
                let mut stb = 0u8;
                if !self.errors.is_empty() {
                    stb |= 0x04;
                }
                if self.esr & self.ese != 0 {
                    stb |= 0x20;
                }
                Ok(Some(stb.to_string().into_bytes()))
            }
            ("ESE", true) => Ok(Some(self.ese.to_string().into_bytes())),
            ("SRE", true) => Ok(Some(self.sre.to_string().into_bytes())),
            ("ESE", false) | ("SRE", false) => {
                let v: u8 = one_param(u)?.parse().map_err(|_| -222)?;
                if name == "ESE" {
                    self.ese = v;
                } else {
                    self.sre = v;
                }
                Ok(None)
            }
            _ => Err(-113),
        }
    }

    /// `VOLT`/`CURR` set and query, per dialect channel addressing.
    fn level(&mut self, cmd: Cmd, u: &Unit, suffix: Option<u32>) -> Res {
        let is_volt = cmd == Cmd::Volt;
        let fam = self.model.family;
        let (value, chan_param) = match (u.query, u.params.as_slice()) {
            (true, []) => (None, None),
            (true, [p]) if is_keyword(p) => (Some(p.as_str()), None),
            (true, [p]) => (None, Some(p.as_str())),
            (true, _) => return Err(-108),
            (false, []) => return Err(-109),
            (false, [v]) => (Some(v.as_str()), None),
            (false, [v, c]) if fam == Family::KeysightE36xx => (Some(v.as_str()), Some(c.as_str())),
            (false, _) => return Err(-108),
        };
        let chans = match (fam, suffix) {
            (Family::SiglentSpd3303x, None) => return Err(-113),
            (_, Some(n)) => vec![self.chan_index(n)?],
            (_, None) => self.chan_arg(chan_param, 1, u)?,
        };
        let limit = |s: &PsuState, c: usize| {
            s.model
                .channels
                .get(c)
                .map(|l| {
                    if is_volt {
                        l.max_voltage
                    } else {
                        l.max_current
                    }
                })
                .unwrap_or(0.0)
        };
        if u.query {
            let vals: Vec<String> = chans
                .iter()
                .map(|&c| {
                    let v = match value.map(|k| k.to_ascii_uppercase()) {
                        Some(k) if k.starts_with("MAX") => limit(self, c),
                        Some(k) if k.starts_with("MIN") => 0.0,
                        _ => self
                            .ch
                            .get(c)
                            .map(|ch| if is_volt { ch.volt } else { ch.curr })
                            .unwrap_or(0.0),
                    };
                    self.num(v)
                })
                .collect();
            return Ok(Some(vals.join(",").into_bytes()));
        }
        let text = value.ok_or(-109)?;
        let mut new = Vec::with_capacity(chans.len());
        for &c in &chans {
            new.push((c, parse_number(text, 0.0, limit(self, c))?));
        }
        for (c, v) in new {
            if let Some(ch) = self.ch.get_mut(c) {
                if is_volt {
                    ch.volt = v;
                } else {
                    ch.curr = v;
                }
            }
        }
        Ok(None)
    }

    fn outp(&mut self, u: &Unit) -> Res {
        let fam = self.model.family;
        if u.query {
            if fam == Family::SiglentSpd3303x {
                // The SPD3303X reports output state through SYSTem:STATus?.
                return Err(-113);
            }
            let chans = match u.params.as_slice() {
                [] => vec![self.selected],
                [c] => self.chan_arg(Some(c), 1, u)?,
                _ => return Err(-108),
            };
            let vals: Vec<&str> = chans
                .iter()
                .map(|&c| {
                    let on = self.ch.get(c).is_some_and(|ch| ch.on);
                    match (fam, on) {
                        (Family::RigolDp8xx, true) => "ON",
                        (Family::RigolDp8xx, false) => "OFF",
                        (_, true) => "1",
                        (_, false) => "0",
                    }
                })
                .collect();
            return Ok(Some(vals.join(",").into_bytes()));
        }
        let (state, chans) = match (fam, u.params.as_slice()) {
            (_, []) => return Err(-109),
            (Family::KeysightE36xx, [s]) => (s, vec![self.selected]),
            (Family::KeysightE36xx, [s, c]) => (s, self.chan_arg(Some(c), 1, u)?),
            (Family::RigolDp8xx, [s]) => (s, vec![self.selected]),
            (Family::RigolDp8xx | Family::SiglentSpd3303x, [c, s]) => {
                (s, vec![self.channel_name(c).ok_or(-224)?])
            }
            (Family::SiglentSpd3303x, [_]) => return Err(-109),
            _ => return Err(-108),
        };
        let on = parse_bool(state)?;
        for c in chans {
            if let Some(ch) = self.ch.get_mut(c) {
                ch.on = on;
            }
        }
        Ok(None)
    }

    fn appl(&mut self, u: &Unit) -> Res {
        let fam = self.model.family;
        if u.query {
            let c = match u.params.as_slice() {
                [] => self.selected,
                [p] => *self.chan_arg(Some(p), 1, u)?.first().ok_or(-224)?,
                _ => return Err(-108),
            };
            let ch = self.ch.get(c).copied().ok_or(-224)?;
            let lim = self.model.channels.get(c).copied().ok_or(-224)?;
            let text = match fam {
                Family::RigolDp8xx => format!(
                    "CH{}:{}V/{}A,{:.3},{:.3}",
                    c + 1,
                    lim.max_voltage,
                    lim.max_current,
                    ch.volt,
                    ch.curr
                ),
                _ => format!("{},{}", self.num(ch.volt), self.num(ch.curr)),
            };
            return Ok(Some(text.into_bytes()));
        }
        // Keysight: APPL v,i[,(@list)] or APPL CHn|P6V,v[,i]; Rigol: APPL CHn,v[,i] or APPL v[,i].
        let p: Vec<&str> = u.params.iter().map(String::as_str).collect();
        let (chans, rest): (Vec<usize>, &[&str]) = match p.split_first() {
            None => return Err(-109),
            Some((first, rest))
                if first.starts_with(|c: char| c.is_ascii_alphabetic()) && !is_keyword(first) =>
            {
                (vec![self.channel_name(first).ok_or(-224)?], rest)
            }
            Some(_) => match (fam, p.as_slice()) {
                (Family::KeysightE36xx, [v, i, c]) if c.starts_with('(') => {
                    let chans = self.chan_arg(Some(c), 1, u)?;
                    return self.apply(&chans, v, Some(i));
                }
                _ => (vec![self.selected], p.as_slice()),
            },
        };
        match rest {
            [v] => self.apply(&chans, v, None),
            [v, i] => self.apply(&chans, v, Some(i)),
            [] => Err(-109),
            _ => Err(-108),
        }
    }

    fn apply(&mut self, chans: &[usize], v: &str, i: Option<&str>) -> Res {
        let mut new = Vec::new();
        for &c in chans {
            let lim = self.model.channels.get(c).copied().ok_or(-224)?;
            let volt = parse_number(v, 0.0, lim.max_voltage)?;
            let curr = match i {
                Some(i) => Some(parse_number(i, 0.0, lim.max_current)?),
                None => None,
            };
            new.push((c, volt, curr));
        }
        for (c, volt, curr) in new {
            if let Some(ch) = self.ch.get_mut(c) {
                ch.volt = volt;
                if let Some(curr) = curr {
                    ch.curr = curr;
                }
            }
        }
        Ok(None)
    }

    /// A channel given as `CHn`, Keysight's `P6V`/`P25V`/`N25V`, or `OUTPn`.
    fn channel_name(&self, p: &str) -> Option<usize> {
        let up = p.trim().trim_matches('"').to_ascii_uppercase();
        let n = match up.as_str() {
            "P6V" => 1,
            "P25V" => 2,
            "N25V" => 3,
            s => s
                .strip_prefix("CH")
                .or_else(|| s.strip_prefix("OUTP"))
                .and_then(|n| n.parse::<usize>().ok())?,
        };
        (1..=self.ch.len()).contains(&n).then(|| n - 1)
    }

    fn chan_index(&self, n: u32) -> Result<usize, i32> {
        let n = usize::try_from(n).map_err(|_| -224)?;
        if n == 0 || n > self.ch.len() {
            return Err(-224);
        }
        Ok(n - 1)
    }

    /// The channels a parameter names (Keysight `(@1,2)`, or `CHn`), or
    /// the selected channel when absent.
    fn chan_arg(&self, p: Option<&str>, _max: usize, _u: &Unit) -> Result<Vec<usize>, i32> {
        let Some(p) = p else {
            return Ok(vec![self.selected]);
        };
        let p = p.trim();
        if let Some(list) = p.strip_prefix("(@").and_then(|r| r.strip_suffix(')')) {
            let mut out = Vec::new();
            for item in list.split(',') {
                let item = item.trim();
                // Ranges "1:3" are allowed in channel lists.
                let (a, b) = item.split_once(':').unwrap_or((item, item));
                let a: u32 = a.trim().parse().map_err(|_| -224)?;
                let b: u32 = b.trim().parse().map_err(|_| -224)?;
                if b < a || b - a > 16 {
                    return Err(-224);
                }
                for n in a..=b {
                    out.push(self.chan_index(n)?);
                }
            }
            return Ok(out);
        }
        self.channel_name(p).map(|c| vec![c]).ok_or(-224)
    }

    /// Number formatting as the family's firmware does it.
    fn num(&self, v: f64) -> String {
        match self.model.family {
            Family::KeysightE36xx => sci(v),
            Family::RigolDp8xx | Family::SiglentSpd3303x => format!("{v:.3}"),
        }
    }
}

fn no_params(u: &Unit) -> Result<(), i32> {
    if u.params.is_empty() {
        Ok(())
    } else {
        Err(-108)
    }
}

fn one_param(u: &Unit) -> Result<&str, i32> {
    match u.params.as_slice() {
        [] => Err(-109),
        [p] => Ok(p.as_str()),
        _ => Err(-108),
    }
}

fn is_keyword(p: &str) -> bool {
    let up = p.to_ascii_uppercase();
    ["MIN", "MINIMUM", "MAX", "MAXIMUM", "DEF", "DEFAULT"].contains(&up.as_str())
}

/// A numeric parameter: a decimal number with an optional unit (`V`, `mV`,
/// `A`, `mA`), or `MIN`/`MAX`/`DEF`. Not a number: -104; outside `min..=max`: -222.
fn parse_number(p: &str, min: f64, max: f64) -> Result<f64, i32> {
    let up = p.trim().to_ascii_uppercase();
    match up.as_str() {
        "MIN" | "MINIMUM" | "DEF" | "DEFAULT" => return Ok(min),
        "MAX" | "MAXIMUM" => return Ok(max),
        _ => {}
    }
    let unit_start = up
        .find(|c: char| c.is_ascii_alphabetic() && c != 'E')
        .unwrap_or(up.len());
    let (num, unit) = up.split_at(unit_start);
    let scale = match unit.trim() {
        "" | "V" | "A" => 1.0,
        "MV" | "MA" => 1e-3,
        _ => return Err(-104),
    };
    let v: f64 = num.trim().parse().map_err(|_| -104)?;
    if !v.is_finite() {
        return Err(-104);
    }
    let v = v * scale;
    if v < min || v > max {
        return Err(-222);
    }
    Ok(v)
}

fn parse_bool(p: &str) -> Result<bool, i32> {
    match p.trim().to_ascii_uppercase().as_str() {
        "ON" | "1" => Ok(true),
        "OFF" | "0" => Ok(false),
        _ => Err(-224),
    }
}

/// Keysight's reply format: `+5.00000000E+00`.
pub fn sci(v: f64) -> String {
    let s = format!("{:.8e}", v);
    let (mant, exp) = s.split_once('e').unwrap_or((s.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let sign = if mant.starts_with('-') { "" } else { "+" };
    format!(
        "{sign}{mant}E{}{:02}",
        if exp < 0 { '-' } else { '+' },
        exp.abs()
    )
}

/// Bytes in the simulator's `WAV:DATA?` block.
pub const WAVEFORM_LEN: usize = 1 << 20;

/// The simulator's waveform (`WAV:DATA?`): 1 MiB of 8-bit samples of a
/// sawtooth, the same every time (for link benchmarks and tests).
pub fn waveform() -> &'static [u8] {
    static W: OnceLock<Vec<u8>> = OnceLock::new();
    W.get_or_init(|| (0..WAVEFORM_LEN).map(|i| (i % 251) as u8).collect())
}

/// A 2x2, 24-bit BMP "screen dump" (contains `\n` bytes on purpose, so
/// binary reads that stop at the terminator are caught).
pub fn screenshot() -> Vec<u8> {
    let mut img = Vec::new();
    let pixels: [[u8; 3]; 4] = [
        [0x0A, 0x0D, 0x23],
        [0xFF, 0x00, 0x0A],
        [0x00, 0xFF, 0x00],
        [0x0A, 0x0A, 0x0A],
    ];
    let row = 2 * 3 + 2; // padded to 4 bytes
    let size: u32 = 54 + 2 * row;
    img.extend_from_slice(b"BM");
    img.extend_from_slice(&size.to_le_bytes());
    img.extend_from_slice(&[0, 0, 0, 0]);
    img.extend_from_slice(&54u32.to_le_bytes());
    img.extend_from_slice(&40u32.to_le_bytes());
    img.extend_from_slice(&2i32.to_le_bytes());
    img.extend_from_slice(&2i32.to_le_bytes());
    img.extend_from_slice(&1u16.to_le_bytes());
    img.extend_from_slice(&24u16.to_le_bytes());
    img.extend_from_slice(&[0u8; 24]);
    for r in pixels.chunks(2) {
        for p in r {
            img.extend_from_slice(p);
        }
        img.extend_from_slice(&[0, 0]);
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::psu::models::{DP832, E36313A, SPD3303X};

    fn run(s: &mut PsuState, line: &str) -> String {
        s.execute(line)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    #[test]
    fn keysight_formats_and_load_model() {
        let mut s = PsuState::new(&E36313A, "MY1", 10.0);
        assert_eq!(sci(5.0), "+5.00000000E+00");
        assert_eq!(sci(-0.0123), "-1.23000000E-02");
        assert_eq!(sci(0.0), "+0.00000000E+00");
        run(&mut s, "INST:NSEL 2;:VOLT 12;CURR 0.5;:OUTP ON");
        assert_eq!(
            run(&mut s, "MEAS:VOLT? (@2);MEAS:CURR? (@2)"),
            "+5.00000000E+00;+5.00000000E-01"
        );
        run(&mut s, "APPL 3,1,(@1)");
        run(&mut s, "OUTP ON,(@1)");
        assert_eq!(
            run(&mut s, "MEAS:CURR? (@1,2)"),
            "+3.00000000E-01,+5.00000000E-01"
        );
        assert_eq!(run(&mut s, "SYST:ERR?"), "+0,\"No error\"");
        assert!(s.reading(1).cc);
        assert!(!s.reading(0).cc);
    }

    #[test]
    fn rigol_and_siglent_forms() {
        let mut r = PsuState::new(&DP832, "DP8C1", 10.0);
        run(&mut r, ":SOUR2:VOLT 5;:SOUR2:CURR 1;:OUTP CH2,ON");
        assert_eq!(run(&mut r, ":MEAS:VOLT? CH2"), "5.000");
        assert_eq!(run(&mut r, ":MEAS:ALL? CH2"), "5.000,0.500,2.500");
        assert_eq!(run(&mut r, ":OUTP? CH2"), "ON");
        assert_eq!(run(&mut r, ":APPL? CH2"), "CH2:30V/3A,5.000,1.000");
        let mut g = PsuState::new(&SPD3303X, "SPD3X1", 10.0);
        run(&mut g, "CH1:VOLT 3.3;CH1:CURR 2;OUTP CH1,ON");
        assert_eq!(run(&mut g, "MEAS:CURR? CH1"), "0.330");
        assert_eq!(run(&mut g, "CH1:VOLT?"), "3.300");
        assert_eq!(run(&mut g, "SYST:STAT?"), "0x14");
    }
}
