//! The simulated PSU's instrument model: channels, load model, protection,
//! saved states, status registers, error queue, and the three dialects'
//! command trees, each written from its programming guide (docs/DRIVERS.md,
//! "The simulated PSU", lists per dialect what is modelled and left out).

use std::collections::{BTreeMap, VecDeque};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::parser::{self, Pattern, Unit};
use crate::psu::models::{Family, PsuModel};

/// SCPI error queue depth (Keysight E36300: 20).
pub const ERROR_QUEUE_LEN: usize = 20;

/// Over-voltage or over-current protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ovp,
    Ocp,
}

/// What a protection command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// The trip level.
    Level,
    /// Enabled or not.
    State,
    /// Tripped? (latched).
    Tripped,
    /// Clear the latch.
    Clear,
}

/// A status register group (Keysight `STATus:QUEStionable` / `:OPERation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reg {
    Ques,
    Oper,
}

/// Which part of a register group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegPart {
    Event,
    Condition,
    Enable,
}

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
    /// `[SOUR]:VOLT:PROT...` / `:OUTP:OVP...` and the OCP forms.
    Prot(Kind, Op),
    /// Keysight `OUTPut:PROTection:CLEar`: both latches.
    OutpProtClear,
    /// Rigol `:OUTPut:MODE?` / `:OUTPut:CVCC?`.
    OutpMode,
    /// Rigol `:OUTPut:TRACk` (per channel), Siglent `OUTPut:TRACK 0|1|2`,
    /// Keysight `OUTPut:TRACk[:STATe]`.
    OutpTrack,
    /// Keysight `OUTPut:PAIR OFF|PARallel|SERies`.
    OutpPair,
    /// Siglent `OUTPut:WAVE CHn,ON|OFF`.
    OutpWave,
    /// Siglent `TIMEr:SET CHn,group,V,I,T` / `TIMEr:SET? CHn,group`.
    TimerSet,
    /// Siglent `TIMEr CHn,ON|OFF`.
    Timer,
    /// Keysight `STATus:QUEStionable...` / `STATus:OPERation...`.
    Status(Reg, RegPart),
    /// Keysight `STATus:PRESet`.
    StatPreset,
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
    use {Kind::*, Op::*, Reg::*, RegPart::*};
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
                    ("[SOURce]:VOLTage:PROTection[:LEVel]", Cmd::Prot(Ovp, Level)),
                    (
                        "[SOURce]:VOLTage:PROTection:TRIPped",
                        Cmd::Prot(Ovp, Tripped),
                    ),
                    ("[SOURce]:VOLTage:PROTection:CLEar", Cmd::Prot(Ovp, Clear)),
                    ("[SOURce]:CURRent:PROTection:STATe", Cmd::Prot(Ocp, State)),
                    (
                        "[SOURce]:CURRent:PROTection:TRIPped",
                        Cmd::Prot(Ocp, Tripped),
                    ),
                    ("[SOURce]:CURRent:PROTection:CLEar", Cmd::Prot(Ocp, Clear)),
                    ("OUTPut:PROTection:CLEar", Cmd::OutpProtClear),
                    ("OUTPut[:STATe]", Cmd::Outp),
                    ("OUTPut:PAIR", Cmd::OutpPair),
                    ("OUTPut:TRACk[:STATe]", Cmd::OutpTrack),
                    ("MEASure[:SCALar]:VOLTage[:DC]", Cmd::MeasVolt),
                    ("MEASure[:SCALar]:CURRent[:DC]", Cmd::MeasCurr),
                    ("APPLy", Cmd::Appl),
                    ("INSTrument:NSELect", Cmd::InstNsel),
                    ("INSTrument[:SELect]", Cmd::InstSel),
                    ("STATus:QUEStionable[:EVENt]", Cmd::Status(Ques, Event)),
                    (
                        "STATus:QUEStionable:CONDition",
                        Cmd::Status(Ques, Condition),
                    ),
                    ("STATus:QUEStionable:ENABle", Cmd::Status(Ques, Enable)),
                    ("STATus:OPERation[:EVENt]", Cmd::Status(Oper, Event)),
                    ("STATus:OPERation:CONDition", Cmd::Status(Oper, Condition)),
                    ("STATus:OPERation:ENABle", Cmd::Status(Oper, Enable)),
                    ("STATus:PRESet", Cmd::StatPreset),
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
                    (
                        "[SOURce#]:VOLTage:PROTection[:LEVel]",
                        Cmd::Prot(Ovp, Level),
                    ),
                    ("[SOURce#]:VOLTage:PROTection:STATe", Cmd::Prot(Ovp, State)),
                    (
                        "[SOURce#]:VOLTage:PROTection:TRIPped",
                        Cmd::Prot(Ovp, Tripped),
                    ),
                    ("[SOURce#]:VOLTage:PROTection:CLEar", Cmd::Prot(Ovp, Clear)),
                    (
                        "[SOURce#]:CURRent:PROTection[:LEVel]",
                        Cmd::Prot(Ocp, Level),
                    ),
                    ("[SOURce#]:CURRent:PROTection:STATe", Cmd::Prot(Ocp, State)),
                    (
                        "[SOURce#]:CURRent:PROTection:TRIPped",
                        Cmd::Prot(Ocp, Tripped),
                    ),
                    ("[SOURce#]:CURRent:PROTection:CLEar", Cmd::Prot(Ocp, Clear)),
                    ("OUTPut:OVP[:STATe]", Cmd::Prot(Ovp, State)),
                    ("OUTPut:OVP:VALue", Cmd::Prot(Ovp, Level)),
                    ("OUTPut:OVP:QUEStion", Cmd::Prot(Ovp, Tripped)),
                    ("OUTPut:OVP:CLEar", Cmd::Prot(Ovp, Clear)),
                    ("OUTPut:OCP[:STATe]", Cmd::Prot(Ocp, State)),
                    ("OUTPut:OCP:VALue", Cmd::Prot(Ocp, Level)),
                    ("OUTPut:OCP:QUEStion", Cmd::Prot(Ocp, Tripped)),
                    ("OUTPut:OCP:CLEar", Cmd::Prot(Ocp, Clear)),
                    ("OUTPut[:STATe]", Cmd::Outp),
                    ("OUTPut:MODE", Cmd::OutpMode),
                    ("OUTPut:CVCC", Cmd::OutpMode),
                    ("OUTPut:TRACk", Cmd::OutpTrack),
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
                    ("[CH#:]VOLTage", Cmd::Volt),
                    ("[CH#:]CURRent", Cmd::Curr),
                    ("OUTPut", Cmd::Outp),
                    ("OUTPut:TRACK", Cmd::OutpTrack),
                    ("OUTPut:WAVE", Cmd::OutpWave),
                    ("TIMEr:SET", Cmd::TimerSet),
                    ("TIMEr", Cmd::Timer),
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
        -221 => "Settings conflict",
        -222 => "Data out of range",
        -224 => "Illegal parameter value",
        -350 => "Queue overflow",
        _ => "Error",
    }
}

/// Keysight E36300 `STATus:QUEStionable` bits (per channel).
const QUES_OV: u16 = 1 << 0;
const QUES_OC: u16 = 1 << 1;
/// Keysight E36300 `STATus:OPERation` bits (per channel).
const OPER_CV: u16 = 1 << 8;
const OPER_CC: u16 = 1 << 10;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Channel {
    volt: f64,
    curr: f64,
    on: bool,
    ovp: f64,
    ovp_on: bool,
    ovp_trip: bool,
    ocp: f64,
    ocp_on: bool,
    ocp_trip: bool,
    /// Rigol per-channel track function.
    track: bool,
    /// The output was on when protection tripped (Keysight restores it on clear).
    was_on: bool,
    /// Siglent waveform display.
    wave: bool,
}

/// Siglent series/parallel modes (`OUTPut:TRACK`), Keysight `OUTPut:PAIR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coupling {
    Independent,
    Series,
    Parallel,
}

/// What `*SAV` keeps.
#[derive(Debug, Clone, PartialEq)]
struct Saved {
    ch: Vec<Channel>,
    coupling: Coupling,
    track: bool,
}

/// Siglent timer: five groups of (voltage, current, seconds) per channel.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Timer {
    groups: [(f64, f64, f64); 5],
    started: Option<Instant>,
}

/// Per-channel status registers (Keysight).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Regs {
    event: u16,
    enable: u16,
    last_cond: u16,
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

/// The SPD3303X's CH3: fixed 2.5, 3.3 or 5 V chosen by a front-panel
/// switch, up to 3.2 A; only switched on and off remotely.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixedOutput {
    /// Switch position, V.
    pub voltage: f64,
    /// Output on.
    pub on: bool,
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
    coupling: Coupling,
    /// Keysight `OUTPut:TRACk`.
    track: bool,
    saved: BTreeMap<u32, Saved>,
    timers: Vec<Timer>,
    fixed: Option<FixedOutput>,
    ques: Vec<Regs>,
    oper: Vec<Regs>,
}

type Res = Result<Option<Vec<u8>>, i32>;

impl PsuState {
    /// A supply of `model`, after `*RST`, with a resistive load of
    /// `load_ohms` on every output.
    pub fn new(model: &'static PsuModel, serial: &str, load_ohms: f64) -> Self {
        let n = model.channels.len();
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
            coupling: Coupling::Independent,
            track: false,
            saved: BTreeMap::new(),
            timers: vec![
                Timer {
                    groups: [(0.0, 0.0, 0.0); 5],
                    started: None,
                };
                n
            ],
            fixed: (model.family == Family::SiglentSpd3303x).then_some(FixedOutput {
                voltage: 3.3,
                on: false,
            }),
            ques: vec![Regs::default(); n],
            oper: vec![Regs::default(); n],
        };
        s.reset();
        s
    }

    fn reset(&mut self) {
        let keysight = self.model.family == Family::KeysightE36xx;
        self.ch = self
            .model
            .channels
            .iter()
            .map(|l| Channel {
                volt: 0.0,
                curr: l.max_current,
                on: false,
                ovp: ovp_max(l.max_voltage),
                // E36300: OVP is always on (no state command).
                ovp_on: keysight,
                ovp_trip: false,
                ocp: ocp_max(l.max_current),
                ocp_on: false,
                ocp_trip: false,
                track: false,
                was_on: false,
                wave: false,
            })
            .collect();
        self.selected = 0;
        self.coupling = Coupling::Independent;
        self.track = false;
        for t in &mut self.timers {
            t.started = None;
        }
        if let Some(f) = &mut self.fixed {
            f.on = false;
        }
    }

    /// `*IDN?` answer.
    pub fn idn(&self) -> String {
        let m = self.model.model;
        let s = &self.serial;
        let fw = self.firmware();
        match self.model.family {
            Family::KeysightE36xx => format!("Keysight Technologies,{m},{s},{fw}"),
            Family::RigolDp8xx => format!("RIGOL TECHNOLOGIES,{m},{s},{fw}"),
            Family::SiglentSpd3303x => format!("Siglent Technologies,{m},{s},{fw},V3.0"),
        }
    }

    fn firmware(&self) -> &'static str {
        match self.model.family {
            Family::KeysightE36xx => "2.1.0-1.0.4-1.12",
            Family::RigolDp8xx => "00.01.14",
            Family::SiglentSpd3303x => "1.01.01.02.05",
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

    /// The SPD3303X's fixed CH3 (other models: `None`).
    pub fn fixed_output(&self) -> Option<FixedOutput> {
        self.fixed
    }

    /// Move the SPD3303X's CH3 switch (2.5, 3.3 or 5 V); false if this
    /// model has no such output or `volts` is not a switch position.
    pub fn set_fixed_voltage(&mut self, volts: f64) -> bool {
        match &mut self.fixed {
            Some(f) if [2.5, 3.3, 5.0].contains(&volts) => {
                f.voltage = volts;
                true
            }
            _ => false,
        }
    }

    /// Move every running Siglent timer `by` into the future (tests and
    /// demos that do not want to wait for the groups' seconds).
    pub fn advance_timers(&mut self, by: Duration) {
        for t in &mut self.timers {
            if let Some(s) = t.started {
                t.started = Some(s.checked_sub(by).unwrap_or(s));
            }
        }
        self.tick();
    }

    /// What channel `n` (0-based) measures under the load model: output off
    /// reads 0; on, the resistive load draws V/R unless that exceeds the
    /// current limit, when the supply goes CC and the voltage sags to I·R.
    pub fn reading(&self, n: usize) -> Reading {
        let off = Reading {
            voltage: 0.0,
            current: 0.0,
            cc: false,
        };
        let Some(c) = self.ch.get(n) else {
            return off;
        };
        if !c.on {
            return off;
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
        self.tick();
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
            self.protect();
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

    /// Trip protection where an output is past its level, and latch the
    /// status registers' events.
    fn protect(&mut self) {
        let fam = self.model.family;
        for n in 0..self.ch.len() {
            let r = self.reading(n);
            let Some(c) = self.ch.get_mut(n) else {
                continue;
            };
            if c.on {
                let ov = c.ovp_on && r.voltage > c.ovp + 1e-9;
                let oc = c.ocp_on
                    && match fam {
                        // E36300: OCP trips when the output goes into CC.
                        Family::KeysightE36xx => r.cc,
                        // DP800: when the output current reaches the OCP value.
                        _ => r.current + 1e-9 >= c.ocp,
                    };
                if ov || oc {
                    c.ovp_trip |= ov;
                    c.ocp_trip |= oc;
                    c.was_on = true;
                    c.on = false;
                }
            }
            let cond = self.cond(Reg::Ques, n);
            if let Some(q) = self.ques.get_mut(n) {
                q.event |= cond & !q.last_cond;
                q.last_cond = cond;
            }
            let cond = self.cond(Reg::Oper, n);
            if let Some(o) = self.oper.get_mut(n) {
                o.event |= cond & !o.last_cond;
                o.last_cond = cond;
            }
        }
    }

    /// A status register group's condition for channel `n`.
    fn cond(&self, reg: Reg, n: usize) -> u16 {
        let Some(c) = self.ch.get(n) else {
            return 0;
        };
        match reg {
            Reg::Ques => {
                (if c.ovp_trip { QUES_OV } else { 0 }) | (if c.ocp_trip { QUES_OC } else { 0 })
            }
            Reg::Oper => {
                if !c.on {
                    0
                } else if self.reading(n).cc {
                    OPER_CC
                } else {
                    OPER_CV
                }
            }
        }
    }

    /// Run the Siglent timers: each running channel takes the settings of
    /// the group its elapsed time falls in; after the last group with a
    /// time the timer stops and the last group's settings stay.
    fn tick(&mut self) {
        let now = Instant::now();
        for (n, t) in self.timers.iter_mut().enumerate() {
            let Some(start) = t.started else {
                continue;
            };
            let elapsed = now.saturating_duration_since(start).as_secs_f64();
            let mut end = 0.0;
            let mut current = None;
            for g in t.groups.iter().filter(|g| g.2 > 0.0) {
                current = Some(*g);
                end += g.2;
                if elapsed < end {
                    break;
                }
            }
            if elapsed >= end {
                t.started = None;
            }
            if let (Some((v, i, _)), Some(c)) = (current, self.ch.get_mut(n)) {
                c.volt = v;
                c.curr = i;
            }
        }
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
                let chans = self.chan_arg(u.params.first().map(String::as_str))?;
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
                    return Ok(Some(format!("CH{}", self.selected + 1).into_bytes()));
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
                    Family::RigolDp8xx => format!("{code},\"{text}\""),
                    // SPD3303X manual: "0 No Error" (no comma, no quotes).
                    Family::SiglentSpd3303x if code == 0 => "0 No Error".to_string(),
                    Family::SiglentSpd3303x => format!("{code} {text}"),
                };
                Ok(Some(entry.into_bytes()))
            }
            Cmd::SystVers => {
                if !u.query {
                    return Err(-113);
                }
                no_params(u)?;
                Ok(Some(match fam {
                    // SPD3303X manual: the software version.
                    Family::SiglentSpd3303x => self.firmware().as_bytes().to_vec(),
                    // The SCPI version the firmware follows.
                    _ => b"1999.0".to_vec(),
                }))
            }
            Cmd::SystStat => {
                if !u.query {
                    return Err(-113);
                }
                no_params(u)?;
                Ok(Some(
                    format!("0x{:04X}", self.siglent_status()).into_bytes(),
                ))
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
            Cmd::Prot(kind, op) => self.prot(kind, op, u, m.suffix),
            Cmd::OutpProtClear => {
                if u.query {
                    return Err(-113);
                }
                let (chans, rest) = self.targets(u, None)?;
                if !rest.is_empty() {
                    return Err(-108);
                }
                for c in chans {
                    self.clear_trip(c, None);
                }
                Ok(None)
            }
            Cmd::OutpMode => {
                if !u.query {
                    return Err(-113);
                }
                let (chans, rest) = self.targets(u, None)?;
                if !rest.is_empty() {
                    return Err(-108);
                }
                let vals: Vec<&str> = chans
                    .iter()
                    .map(|&c| if self.reading(c).cc { "CC" } else { "CV" })
                    .collect();
                Ok(Some(vals.join(",").into_bytes()))
            }
            Cmd::OutpTrack => self.track_cmd(u),
            Cmd::OutpPair => self.pair_cmd(u),
            Cmd::OutpWave => {
                if u.query {
                    return Err(-113);
                }
                let [c, s] = u.params.as_slice() else {
                    return Err(if u.params.len() < 2 { -109 } else { -108 });
                };
                let c = self.channel_name(c).ok_or(-224)?;
                let on = parse_bool(s)?;
                if let Some(ch) = self.ch.get_mut(c) {
                    ch.wave = on;
                }
                Ok(None)
            }
            Cmd::TimerSet => self.timer_set(u),
            Cmd::Timer => {
                if u.query {
                    return Err(-113);
                }
                let [c, s] = u.params.as_slice() else {
                    return Err(if u.params.len() < 2 { -109 } else { -108 });
                };
                let c = self.channel_name(c).ok_or(-224)?;
                let on = parse_bool(s)?;
                if let Some(t) = self.timers.get_mut(c) {
                    t.started = on.then(Instant::now);
                }
                self.tick();
                Ok(None)
            }
            Cmd::Status(reg, part) => self.status(reg, part, u),
            Cmd::StatPreset => {
                if u.query {
                    return Err(-113);
                }
                no_params(u)?;
                for r in self.ques.iter_mut().chain(self.oper.iter_mut()) {
                    r.enable = 0;
                }
                Ok(None)
            }
        }
    }

    /// SPD3303X `SYSTem:STATus?`: bit 0/1 CH1/CH2 CC, bits 2-3 the mode
    /// (01 independent, 10 parallel, 11 series), bit 4/5 CH1/CH2 on, bit
    /// 6/7 timer 1/2 on, bit 8/9 CH1/CH2 waveform display.
    fn siglent_status(&self) -> u32 {
        let mut bits: u32 = match self.coupling {
            Coupling::Independent => 0b0100,
            Coupling::Parallel => 0b1000,
            Coupling::Series => 0b1100,
        };
        for n in 0..self.ch.len().min(2) {
            if self.reading(n).cc {
                bits |= 1 << n;
            }
            if let Some(c) = self.ch.get(n) {
                if c.on {
                    bits |= 1 << (4 + n);
                }
                if c.wave {
                    bits |= 1 << (8 + n);
                }
            }
            if self.timers.get(n).is_some_and(|t| t.started.is_some()) {
                bits |= 1 << (6 + n);
            }
        }
        bits
    }

    fn common(&mut self, name: &str, u: &Unit) -> Res {
        let q = u.query;
        let fam = self.model.family;
        match (name, q) {
            ("IDN", true) => Ok(Some(self.idn().into_bytes())),
            // Keysight: "0" (no options); Rigol: one entry per option slot,
            // "0" where none is installed (a DP832 without options). The
            // SPD3303X manual has no *OPT?.
            ("OPT", true) if fam == Family::KeysightE36xx => Ok(Some(b"0".to_vec())),
            ("OPT", true) if fam == Family::RigolDp8xx => Ok(Some(b"0,0,0,0".to_vec())),
            ("RST", false) => {
                self.reset();
                Ok(None)
            }
            ("CLS", false) => {
                self.errors.clear();
                self.esr = 0;
                for r in self.ques.iter_mut().chain(self.oper.iter_mut()) {
                    r.event = 0;
                }
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
            ("STB", true) => Ok(Some(self.stb().to_string().into_bytes())),
            ("ESE", true) => Ok(Some(self.ese.to_string().into_bytes())),
            ("SRE", true) => Ok(Some(self.sre.to_string().into_bytes())),
            ("ESE", false) | ("SRE", false) => {
                let v: u8 = one_param(u)?.parse().map_err(|_| -222)?;
                if name == "ESE" {
                    self.ese = v;
                } else {
                    self.sre = v & !0x40;
                }
                Ok(None)
            }
            ("SAV", false) | ("RCL", false) => {
                let slot = self.slot(one_param(u)?)?;
                if name == "SAV" {
                    let mut ch = self.ch.clone();
                    for c in &mut ch {
                        c.ovp_trip = false;
                        c.ocp_trip = false;
                    }
                    self.saved.insert(
                        slot,
                        Saved {
                            ch,
                            coupling: self.coupling,
                            track: self.track,
                        },
                    );
                } else {
                    // A slot never saved holds the *RST state.
                    match self.saved.get(&slot).cloned() {
                        Some(s) => {
                            self.ch = s.ch;
                            self.coupling = s.coupling;
                            self.track = s.track;
                        }
                        None => self.reset(),
                    }
                }
                Ok(None)
            }
            _ => Err(-113),
        }
    }

    /// The status byte: bit 2 error queue not empty, bit 3 questionable
    /// summary and bit 7 operation summary (Keysight), bit 5 standard
    /// event summary, bit 6 master summary.
    fn stb(&self) -> u8 {
        let mut stb = 0u8;
        if !self.errors.is_empty() {
            stb |= 0x04;
        }
        if self.ques.iter().any(|r| r.event & r.enable != 0) {
            stb |= 0x08;
        }
        if self.esr & self.ese != 0 {
            stb |= 0x20;
        }
        if self.oper.iter().any(|r| r.event & r.enable != 0) {
            stb |= 0x80;
        }
        if stb & self.sre != 0 {
            stb |= 0x40;
        }
        stb
    }

    /// A `*SAV`/`*RCL` location: Keysight E36300 0..=9, Rigol DP800
    /// 1..=10, Siglent SPD3303X 1..=5.
    fn slot(&self, p: &str) -> Result<u32, i32> {
        let n: u32 = p.trim().parse().map_err(|_| -104)?;
        let range = match self.model.family {
            Family::KeysightE36xx => 0..=9,
            Family::RigolDp8xx => 1..=10,
            Family::SiglentSpd3303x => 1..=5,
        };
        if range.contains(&n) {
            Ok(n)
        } else {
            Err(-222)
        }
    }

    /// Split a unit's parameters into the channels addressed and the
    /// rest: a header suffix (`SOUR2`), Keysight's trailing `(@list)`,
    /// Rigol's leading `CHn`; otherwise the selected channel.
    fn targets<'a>(
        &self,
        u: &'a Unit,
        suffix: Option<u32>,
    ) -> Result<(Vec<usize>, Vec<&'a str>), i32> {
        let p: Vec<&str> = u.params.iter().map(String::as_str).collect();
        if let Some(n) = suffix {
            return Ok((vec![self.chan_index(n)?], p));
        }
        match self.model.family {
            Family::KeysightE36xx => match p.split_last() {
                Some((last, rest)) if last.starts_with("(@") => {
                    Ok((self.chan_arg(Some(last))?, rest.to_vec()))
                }
                _ => Ok((vec![self.selected], p)),
            },
            _ => match p.split_first() {
                Some((first, rest)) if is_channel_word(first) => {
                    Ok((vec![self.channel_name(first).ok_or(-224)?], rest.to_vec()))
                }
                _ => Ok((vec![self.selected], p)),
            },
        }
    }

    /// Protection level, state, tripped query and clear.
    fn prot(&mut self, kind: Kind, op: Op, u: &Unit, suffix: Option<u32>) -> Res {
        let fam = self.model.family;
        let (chans, rest) = self.targets(u, suffix)?;
        let bounds = |s: &PsuState, c: usize| -> (f64, f64) {
            let l = s.model.channels.get(c);
            match kind {
                Kind::Ovp => (
                    if fam == Family::RigolDp8xx { 0.01 } else { 0.0 },
                    l.map(|l| ovp_max(l.max_voltage)).unwrap_or(0.0),
                ),
                Kind::Ocp => (
                    if fam == Family::RigolDp8xx {
                        0.001
                    } else {
                        0.0
                    },
                    l.map(|l| ocp_max(l.max_current)).unwrap_or(0.0),
                ),
            }
        };
        let yes_no = |b: bool| match (fam, op) {
            (Family::RigolDp8xx, Op::Tripped) => if b { "YES" } else { "NO" }.to_string(),
            (Family::RigolDp8xx, _) => if b { "ON" } else { "OFF" }.to_string(),
            _ => if b { "1" } else { "0" }.to_string(),
        };
        if u.query {
            let vals: Vec<String> = match op {
                Op::Clear => return Err(-113),
                Op::Level => {
                    let kw = match rest.as_slice() {
                        [] => None,
                        [k] if is_keyword(k) => Some(k.to_ascii_uppercase()),
                        [_] => return Err(-224),
                        _ => return Err(-108),
                    };
                    chans
                        .iter()
                        .map(|&c| {
                            let (lo, hi) = bounds(self, c);
                            let v = match &kw {
                                Some(k) if k.starts_with("MAX") => hi,
                                Some(k) if k.starts_with("MIN") => lo,
                                _ => self
                                    .ch
                                    .get(c)
                                    .map(|ch| match kind {
                                        Kind::Ovp => ch.ovp,
                                        Kind::Ocp => ch.ocp,
                                    })
                                    .unwrap_or(0.0),
                            };
                            self.num(v)
                        })
                        .collect()
                }
                Op::State | Op::Tripped => {
                    if !rest.is_empty() {
                        return Err(-108);
                    }
                    chans
                        .iter()
                        .map(|&c| {
                            let ch = self.ch.get(c);
                            let b = match (kind, op) {
                                (Kind::Ovp, Op::State) => ch.is_some_and(|c| c.ovp_on),
                                (Kind::Ocp, Op::State) => ch.is_some_and(|c| c.ocp_on),
                                (Kind::Ovp, _) => ch.is_some_and(|c| c.ovp_trip),
                                (Kind::Ocp, _) => ch.is_some_and(|c| c.ocp_trip),
                            };
                            yes_no(b)
                        })
                        .collect()
                }
            };
            return Ok(Some(vals.join(",").into_bytes()));
        }
        match op {
            Op::Tripped => Err(-113),
            Op::Clear => {
                if !rest.is_empty() {
                    return Err(-108);
                }
                for c in chans {
                    self.clear_trip(c, Some(kind));
                }
                Ok(None)
            }
            Op::Level => {
                let [v] = rest.as_slice() else {
                    return Err(if rest.is_empty() { -109 } else { -108 });
                };
                let mut new = Vec::new();
                for &c in &chans {
                    let (lo, hi) = bounds(self, c);
                    new.push((c, parse_number(v, lo, hi)?));
                }
                for (c, v) in new {
                    if let Some(ch) = self.ch.get_mut(c) {
                        match kind {
                            Kind::Ovp => ch.ovp = v,
                            Kind::Ocp => ch.ocp = v,
                        }
                    }
                }
                Ok(None)
            }
            Op::State => {
                let [s] = rest.as_slice() else {
                    return Err(if rest.is_empty() { -109 } else { -108 });
                };
                let on = parse_bool(s)?;
                for c in chans {
                    if let Some(ch) = self.ch.get_mut(c) {
                        match kind {
                            Kind::Ovp => ch.ovp_on = on,
                            Kind::Ocp => ch.ocp_on = on,
                        }
                    }
                }
                Ok(None)
            }
        }
    }

    /// Clear channel `c`'s protection latch (`kind`, or both). Keysight
    /// restores the output's state from before the trip; a Rigol output
    /// stays off until switched on.
    fn clear_trip(&mut self, c: usize, kind: Option<Kind>) {
        let keysight = self.model.family == Family::KeysightE36xx;
        if let Some(ch) = self.ch.get_mut(c) {
            let was = ch.ovp_trip || ch.ocp_trip;
            if kind != Some(Kind::Ocp) {
                ch.ovp_trip = false;
            }
            if kind != Some(Kind::Ovp) {
                ch.ocp_trip = false;
            }
            if was && !ch.ovp_trip && !ch.ocp_trip {
                if keysight && ch.was_on {
                    ch.on = true;
                }
                ch.was_on = false;
            }
        }
    }

    /// Rigol `:OUTP:TRAC [CHn,]ON|OFF`, Siglent `OUTP:TRACK 0|1|2`,
    /// Keysight `OUTP:TRAC 0|1`.
    fn track_cmd(&mut self, u: &Unit) -> Res {
        match self.model.family {
            Family::SiglentSpd3303x => {
                if u.query {
                    return Err(-113);
                }
                self.coupling = match one_param(u)?.trim() {
                    "0" => Coupling::Independent,
                    "1" => Coupling::Series,
                    "2" => Coupling::Parallel,
                    _ => return Err(-224),
                };
                self.couple();
                Ok(None)
            }
            Family::RigolDp8xx => {
                if self.ch.len() < 2 {
                    return Err(-113);
                }
                let (chans, rest) = self.targets(u, None)?;
                // The DP800's track function couples CH1 and CH2.
                if chans.iter().any(|&c| c > 1) {
                    return Err(-221);
                }
                if u.query {
                    if !rest.is_empty() {
                        return Err(-108);
                    }
                    let vals: Vec<&str> = chans
                        .iter()
                        .map(|&c| {
                            if self.ch.get(c).is_some_and(|c| c.track) {
                                "ON"
                            } else {
                                "OFF"
                            }
                        })
                        .collect();
                    return Ok(Some(vals.join(",").into_bytes()));
                }
                let [s] = rest.as_slice() else {
                    return Err(if rest.is_empty() { -109 } else { -108 });
                };
                let on = parse_bool(s)?;
                for c in chans {
                    if let Some(ch) = self.ch.get_mut(c) {
                        ch.track = on;
                    }
                }
                Ok(None)
            }
            Family::KeysightE36xx => {
                if self.ch.len() < 3 {
                    return Err(-113);
                }
                if u.query {
                    no_params(u)?;
                    return Ok(Some(if self.track {
                        b"1".to_vec()
                    } else {
                        b"0".to_vec()
                    }));
                }
                self.track = parse_bool(one_param(u)?)?;
                self.couple();
                Ok(None)
            }
        }
    }

    /// Keysight `OUTP:PAIR OFF|PAR|SER` (E36312A/E36313A: CH2 with CH3).
    fn pair_cmd(&mut self, u: &Unit) -> Res {
        if self.ch.len() < 3 {
            return Err(-113);
        }
        if u.query {
            no_params(u)?;
            let s = match self.coupling {
                Coupling::Independent => "OFF",
                Coupling::Parallel => "PAR",
                Coupling::Series => "SER",
            };
            return Ok(Some(s.as_bytes().to_vec()));
        }
        let p = one_param(u)?.trim().to_ascii_uppercase();
        self.coupling = match p.as_str() {
            "OFF" => Coupling::Independent,
            "PAR" | "PARALLEL" => Coupling::Parallel,
            "SER" | "SERIES" => Coupling::Series,
            _ => return Err(-224),
        };
        self.couple();
        Ok(None)
    }

    /// The channel that follows channel `c`'s settings, if any: the
    /// SPD3303X in series/parallel (CH2 follows CH1), the E36300 paired or
    /// tracking (CH3 follows CH2), the DP800 track function (CH1 and CH2
    /// follow each other).
    fn follower(&self, c: usize) -> Option<usize> {
        match self.model.family {
            Family::SiglentSpd3303x => {
                (c == 0 && self.coupling != Coupling::Independent).then_some(1)
            }
            Family::KeysightE36xx => {
                (c == 1 && (self.coupling != Coupling::Independent || self.track)).then_some(2)
            }
            Family::RigolDp8xx => {
                let other = match c {
                    0 => 1,
                    1 => 0,
                    _ => return None,
                };
                self.ch.get(c).filter(|ch| ch.track).map(|_| other)
            }
        }
    }

    /// Bring followers in line when a coupling starts.
    fn couple(&mut self) {
        for leader in 0..self.ch.len() {
            if let Some(f) = self.follower(leader) {
                if let Some(l) = self.ch.get(leader).copied() {
                    if let Some(ch) = self.ch.get_mut(f) {
                        ch.volt = l.volt;
                        ch.curr = l.curr;
                    }
                }
            }
        }
    }

    /// Siglent `TIMEr:SET CHn,group,V,I,T` and `TIMEr:SET? CHn,group`.
    fn timer_set(&mut self, u: &Unit) -> Res {
        let p: Vec<&str> = u.params.iter().map(String::as_str).collect();
        let (c, g, rest) = match p.as_slice() {
            [c, g, rest @ ..] => (*c, *g, rest),
            _ => return Err(-109),
        };
        let c = self.channel_name(c).ok_or(-224)?;
        let g: usize = g.trim().parse().map_err(|_| -104)?;
        if !(1..=5).contains(&g) {
            return Err(-222);
        }
        let lim = self.model.channels.get(c).copied().ok_or(-224)?;
        if u.query {
            if !rest.is_empty() {
                return Err(-108);
            }
            let (v, i, t) = self
                .timers
                .get(c)
                .and_then(|t| t.groups.get(g - 1))
                .copied()
                .unwrap_or_default();
            return Ok(Some(format!("{v},{i},{t}").into_bytes()));
        }
        let [v, i, t] = rest else {
            return Err(if rest.len() < 3 { -109 } else { -108 });
        };
        let v = parse_number(v, 0.0, lim.max_voltage)?;
        let i = parse_number(i, 0.0, lim.max_current)?;
        // SPD3303X: up to 10000 s per group.
        let t = parse_number(t, 0.0, 10_000.0)?;
        if let Some(slot) = self.timers.get_mut(c).and_then(|t| t.groups.get_mut(g - 1)) {
            *slot = (v, i, t);
        }
        Ok(None)
    }

    /// Keysight `STATus:QUEStionable|OPERation[:EVENt]?|:CONDition?|:ENABle`.
    fn status(&mut self, reg: Reg, part: RegPart, u: &Unit) -> Res {
        let (chans, rest) = self.targets(u, None)?;
        let regs = match reg {
            Reg::Ques => &mut self.ques,
            Reg::Oper => &mut self.oper,
        };
        if !u.query {
            if part != RegPart::Enable {
                return Err(-113);
            }
            let [v] = rest.as_slice() else {
                return Err(if rest.is_empty() { -109 } else { -108 });
            };
            let v: u16 = v.trim().parse().map_err(|_| -222)?;
            for c in chans {
                if let Some(r) = regs.get_mut(c) {
                    r.enable = v;
                }
            }
            return Ok(None);
        }
        if !rest.is_empty() {
            return Err(-108);
        }
        let mut vals = Vec::new();
        for c in chans {
            let v = match part {
                RegPart::Event => regs.get_mut(c).map(|r| std::mem::take(&mut r.event)),
                RegPart::Enable => regs.get(c).map(|r| r.enable),
                RegPart::Condition => regs.get(c).map(|r| r.last_cond),
            };
            vals.push(v.unwrap_or(0).to_string());
        }
        Ok(Some(vals.join(",").into_bytes()))
    }

    /// `VOLT`/`CURR` set and query, per dialect channel addressing.
    fn level(&mut self, cmd: Cmd, u: &Unit, suffix: Option<u32>) -> Res {
        let is_volt = cmd == Cmd::Volt;
        let fam = self.model.family;
        let (value, chan_param) = match (u.query, u.params.as_slice()) {
            (true, []) => (None, None),
            (true, [p]) if is_keyword(p) => (Some(p.as_str()), None),
            (true, [p]) if fam != Family::SiglentSpd3303x => (None, Some(p.as_str())),
            (true, [p, c]) if fam == Family::KeysightE36xx && is_keyword(p) => {
                (Some(p.as_str()), Some(c.as_str()))
            }
            (true, _) => return Err(-108),
            (false, []) => return Err(-109),
            (false, [v]) => (Some(v.as_str()), None),
            (false, [v, c]) if fam == Family::KeysightE36xx => (Some(v.as_str()), Some(c.as_str())),
            (false, _) => return Err(-108),
        };
        let chans = match suffix {
            Some(n) => vec![self.chan_index(n)?],
            None => self.chan_arg(chan_param)?,
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
            let v = parse_number(text, 0.0, limit(self, c))?;
            new.push((c, v));
            // DP800 track couples the voltage settings only.
            let coupled = is_volt || fam != Family::RigolDp8xx;
            if let Some(f) = self.follower(c).filter(|f| coupled && !chans.contains(f)) {
                new.push((f, v.min(limit(self, f))));
            }
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
                [c] => self.chan_arg(Some(c))?,
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
        // The SPD3303X's fixed CH3: on/off only.
        if let (Family::SiglentSpd3303x, [c, s]) = (fam, u.params.as_slice()) {
            if c.trim().eq_ignore_ascii_case("CH3") {
                let on = parse_bool(s)?;
                if let Some(f) = &mut self.fixed {
                    f.on = on;
                }
                return Ok(None);
            }
        }
        let (state, chans) = match (fam, u.params.as_slice()) {
            (_, []) => return Err(-109),
            (Family::KeysightE36xx, [s]) => (s, vec![self.selected]),
            (Family::KeysightE36xx, [s, c]) => (s, self.chan_arg(Some(c))?),
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
                // A tripped output stays off until its protection is cleared.
                ch.on = on && !ch.ovp_trip && !ch.ocp_trip;
                if !on {
                    ch.was_on = false;
                }
            }
        }
        Ok(None)
    }

    fn appl(&mut self, u: &Unit) -> Res {
        let fam = self.model.family;
        if u.query {
            let c = match u.params.as_slice() {
                [] => self.selected,
                [p] => *self.chan_arg(Some(p))?.first().ok_or(-224)?,
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
                    let chans = self.chan_arg(Some(c))?;
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
    fn chan_arg(&self, p: Option<&str>) -> Result<Vec<usize>, i32> {
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

/// Highest OVP level: 110 % of the channel's rating (DP832: 33 V, 5.5 V).
fn ovp_max(v: f64) -> f64 {
    (v * 1.1 * 1000.0).round() / 1000.0
}

/// Highest OCP level: 110 % of the channel's rating (DP832: 3.3 A).
fn ocp_max(i: f64) -> f64 {
    (i * 1.1 * 1000.0).round() / 1000.0
}

/// `CH1`, `ch2`: a Rigol/Siglent channel word as a first parameter.
fn is_channel_word(p: &str) -> bool {
    let up = p.trim().to_ascii_uppercase();
    up.strip_prefix("CH")
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
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
    use crate::psu::models::{PsuModel, DP832, E36103B, E36312A, E36313A, SPD3303X};
    use std::time::Duration;

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
        assert_eq!(run(&mut g, "SYST:STAT?"), "0x0014");
    }

    /// Run `steps` on a fresh `model` (10 Ω load): each line's reply must
    /// be the expected bytes (`None`: no reply); the error queue must be
    /// empty at the end (errors are checked with `SYST:ERR?` steps).
    fn script(model: &'static PsuModel, steps: &[(&str, Option<&str>)]) {
        let mut s = PsuState::new(model, "SN1", 10.0);
        for (line, want) in steps {
            let got = s.execute(line);
            assert_eq!(
                got.as_deref(),
                want.map(str::as_bytes),
                "{}: {line:?} answered {:?}",
                model.model,
                got.as_deref().map(String::from_utf8_lossy)
            );
        }
        assert_eq!(s.error_count(), 0, "{}: errors left", model.model);
    }

    #[test]
    fn keysight_e36300_guide() {
        script(
            &E36313A,
            &[
                (
                    "*IDN?",
                    Some("Keysight Technologies,E36313A,SN1,2.1.0-1.0.4-1.12"),
                ),
                ("*OPT?", Some("0")),
                ("SYST:VERS?", Some("1999.0")),
                ("SYST:ERR?", Some("+0,\"No error\"")),
                // Output on/off, CV and CC in the operation register.
                ("VOLT 5,(@2);CURR 0.2,(@2);OUTP ON,(@2)", None),
                ("OUTP? (@1:3)", Some("0,1,0")),
                ("STAT:OPER:COND? (@2)", Some("1024")),
                ("CURR 1,(@2)", None),
                ("STAT:OPER:COND? (@2)", Some("256")),
                ("MEAS:CURR? (@2)", Some("+5.00000000E-01")),
                // OVP: level (MIN/MAX), trip, latch, clear restores the output.
                ("VOLT:PROT? MAX,(@1)", Some("+6.60000000E+00")),
                ("VOLT:PROT? (@2)", Some("+2.75000000E+01")),
                ("VOLT:PROT 4,(@2)", None),
                ("VOLT:PROT:TRIP? (@2)", Some("1")),
                ("OUTP? (@2)", Some("0")),
                ("STAT:QUES:COND? (@2)", Some("1")),
                ("STAT:QUES? (@2)", Some("1")),
                ("STAT:QUES? (@2)", Some("0")),
                ("OUTP ON,(@2)", None),
                ("OUTP? (@2)", Some("0")),
                ("VOLT 3,(@2);:OUTP:PROT:CLE (@2)", None),
                ("VOLT:PROT:TRIP? (@2)", Some("0")),
                ("OUTP? (@2)", Some("1")),
                // OCP trips when the output goes CC.
                ("CURR:PROT:STAT? (@2)", Some("0")),
                ("CURR:PROT:STAT ON,(@2)", None),
                ("CURR 0.1,(@2)", None),
                ("CURR:PROT:TRIP? (@2)", Some("1")),
                ("STAT:QUES:COND? (@2)", Some("2")),
                ("CURR 1,(@2);:CURR:PROT:CLE (@2);:OUTP? (@2)", Some("1")),
                // Status byte: QUES summary (bit 3) through its enable.
                ("STAT:QUES:ENAB 3,(@2);:STAT:QUES:ENAB? (@2)", Some("3")),
                ("VOLT:PROT 1,(@2);*STB?", Some("8")),
                ("*SRE 8;*STB?", Some("72")),
                ("*CLS;*STB?", Some("0")),
                (
                    "STAT:PRES;*SRE 0;:VOLT:PROT 27,(@2);:OUTP:PROT:CLE (@2)",
                    None,
                ),
                // Pairing and tracking (CH3 follows CH2).
                ("OUTP:PAIR?", Some("OFF")),
                ("OUTP:PAIR SER;:VOLT 7,(@2)", None),
                ("OUTP:PAIR?;:VOLT? (@3)", Some("SER;+7.00000000E+00")),
                ("OUTP:PAIR OFF;:OUTP:TRAC?", Some("0")),
                // *SAV/*RCL (0..9); the error queue and *ESR.
                (
                    "*SAV 0;:VOLT 1,(@2);*RCL 0;:VOLT? (@2)",
                    Some("+7.00000000E+00"),
                ),
                ("*SAV 10", None),
                ("SYST:ERR?", Some("-222,\"Data out of range\"")),
                ("*ESR?", Some("16")),
                ("*ESR?", Some("0")),
                ("VOLT:PROT:STAT ON", None),
                ("SYST:ERR?", Some("-113,\"Undefined header\"")),
                ("VOLT 7,(@1)", None),
                ("SYST:ERR?", Some("-222,\"Data out of range\"")),
                ("CURR:PROT:TRIP", None),
                ("SYST:ERR?", Some("-113,\"Undefined header\"")),
                (
                    "*RST;:VOLT:PROT? (@2);:OUTP? (@2)",
                    Some("+2.75000000E+01;0"),
                ),
            ],
        );
        // Single-output models have no pairing or tracking.
        script(
            &E36103B,
            &[
                ("OUTP:PAIR?", None),
                ("SYST:ERR?", Some("-113,\"Undefined header\"")),
            ],
        );
        script(
            &E36312A,
            &[
                ("VOLT 5, (@1);CURR 1, (@1);OUTPut 1, (@1)", None),
                ("MEASure:VOLTage? (@1)", Some("+5.00000000E+00")),
                ("CURR 5.1, (@1)", None),
                ("SYST:ERR?", Some("-222,\"Data out of range\"")),
            ],
        );
    }

    #[test]
    fn rigol_dp800_guide() {
        script(
            &DP832,
            &[
                ("*IDN?", Some("RIGOL TECHNOLOGIES,DP832,SN1,00.01.14")),
                ("*OPT?", Some("0,0,0,0")),
                (":SYST:VERS?", Some("1999.0")),
                (":SYST:ERR?", Some("0,\"No error\"")),
                // qcodes' spelling: select, then absolute headers.
                (
                    ":INSTrument:NSELect 1; :SOURce:VOLTage:LEVel:IMMediate:AMPLitude 5",
                    None,
                ),
                (":INST:NSEL 1; :SOUR:CURR 0.2; :OUTP:STAT ON", None),
                (":OUTP:MODE? CH1", Some("CC")),
                (":OUTP:CVCC?", Some("CC")),
                (":MEAS:ALL? CH1", Some("2.000,0.200,0.400")),
                (":SOUR1:CURR 1;:OUTP:MODE?", Some("CV")),
                (":OUTP:MODE? CH2", Some("CV")),
                // OVP through :OUTP:OVP and [:SOURn]:VOLT:PROT.
                (":OUTP:OVP:VAL? CH1", Some("33.000")),
                (":OUTP:OVP? CH1", Some("OFF")),
                (":OUTP:OVP:VAL CH1,4", None),
                (":SOUR1:VOLT:PROT?", Some("4.000")),
                (":OUTP:OVP:QUES? CH1", Some("NO")),
                (":OUTP:OVP CH1,ON", None),
                (":OUTP:OVP:QUES? CH1", Some("YES")),
                (":SOUR1:VOLT:PROT:TRIP?", Some("YES")),
                (":OUTP? CH1", Some("OFF")),
                (":OUTP:OVP:VAL CH1,6;:OUTP:OVP:CLEAR CH1", None),
                (":OUTP:OVP:QUES? CH1;:OUTP? CH1", Some("NO;OFF")),
                (":OUTP CH1,ON;:MEAS:VOLT? CH1", Some("5.000")),
                // OCP trips when the current reaches the OCP value.
                (":SOUR1:CURR:PROT 0.4;:SOUR1:CURR:PROT:STAT ON", None),
                (":SOUR1:CURR:PROT:TRIP?", Some("YES")),
                (":SOUR1:CURR:PROT:CLE;:OUTP:OCP:QUES? CH1", Some("NO")),
                (":OUTP:OCP:VAL CH3,3.4", None),
                (":SYST:ERR?", Some("-222,\"Data out of range\"")),
                (":OUTP:OVP:VAL CH3,5.5;:OUTP:OVP:VAL? CH3", Some("5.500")),
                // CH3 is 5 V / 3 A.
                (":SOUR3:VOLT 5.1", None),
                (":SYST:ERR?", Some("-222,\"Data out of range\"")),
                (":APPL? CH3", Some("CH3:5V/3A,0.000,3.000")),
                // Track: CH2's voltage follows CH1's.
                (":OUTP:TRAC? CH1", Some("OFF")),
                (
                    ":OUTP:TRAC CH1,ON;:SOUR1:VOLT 12;:SOUR2:VOLT?",
                    Some("12.000"),
                ),
                (":OUTP:TRAC CH3,ON", None),
                (":SYST:ERR?", Some("-221,\"Settings conflict\"")),
                // *SAV/*RCL 1..10.
                ("*SAV 10;*RST;:SOUR1:VOLT?", Some("0.000")),
                ("*RCL 10;:SOUR1:VOLT?;:OUTP:TRAC? CH1", Some("12.000;ON")),
                ("*SAV 0", None),
                (":SYST:ERR?", Some("-222,\"Data out of range\"")),
                (":OUTP:OVP CH9,ON", None),
                (":SYST:ERR?", Some("-224,\"Illegal parameter value\"")),
                (":OUTP:MODE CH1", None),
                (":SYST:ERR?", Some("-113,\"Undefined header\"")),
                ("*ESR?", Some("48")),
            ],
        );
    }

    #[test]
    fn siglent_spd3303x_manual() {
        script(
            &SPD3303X,
            &[
                (
                    "*IDN?",
                    Some("Siglent Technologies,SPD3303X,SN1,1.01.01.02.05,V3.0"),
                ),
                ("SYST:ERR?", Some("0 No Error")),
                ("SYST:VERS?", Some("1.01.01.02.05")),
                ("SYST:STAT?", Some("0x0004")),
                // [{CH1|CH2}:]VOLTage: without the prefix, the INSTrument channel.
                ("INST CH2;VOLT 2.5;CURR 0.1", None),
                ("INST?;CH2:VOLT?;CH2:CURR?", Some("CH2;2.500;0.100")),
                (
                    "OUTP CH2,ON;MEAS:CURR? CH2;MEAS:POWE? CH2",
                    Some("0.100;0.100"),
                ),
                // bits: CH2 CC (1), independent (2), CH2 on (5).
                ("SYST:STAT?", Some("0x0026")),
                ("OUTP:WAVE CH2,ON;SYST:STAT?", Some("0x0226")),
                // Series (1) and parallel (2): CH2 follows CH1.
                ("OUTP:TRACK 1;CH1:VOLT 10;CH2:VOLT?", Some("10.000")),
                ("SYST:STAT?", Some("0x022C")),
                ("OUTP:TRACK 2;SYST:STAT?", Some("0x0228")),
                ("OUTP:TRACK 3", None),
                ("SYST:ERR?", Some("-224 Illegal parameter value")),
                ("OUTP:TRACK 0;OUTP CH2,OFF;OUTP:WAVE CH2,OFF", None),
                // Timer groups.
                ("TIMEr:SET CH1,2,3,0.5,2", None),
                ("TIMEr:SET? CH1,2", Some("3,0.5,2")),
                ("TIMEr:SET? CH1,1", Some("0,0,0")),
                ("TIMEr:SET CH1,6,1,1,1", None),
                ("SYST:ERR?", Some("-222 Data out of range")),
                ("TIMEr:SET CH1,1,33,1,1", None),
                ("SYST:ERR?", Some("-222 Data out of range")),
                // CH3: on/off only.
                ("OUTP CH3,ON", None),
                ("CH3:VOLT 3.3", None),
                ("SYST:ERR?", Some("-224 Illegal parameter value")),
                // *SAV/*RCL 1..5; no *OPT? and no OVP/OCP in the manual.
                ("*SAV 5;CH1:VOLT 1;*RCL 5;CH1:VOLT?", Some("10.000")),
                ("*SAV 6", None),
                ("SYST:ERR?", Some("-222 Data out of range")),
                ("*OPT?", None),
                ("SYST:ERR?", Some("-113 Undefined header")),
                ("VOLT:PROT 5", None),
                ("SYST:ERR?", Some("-113 Undefined header")),
            ],
        );
    }

    #[test]
    fn siglent_timer_runs_its_groups_then_stops() {
        let mut s = PsuState::new(&SPD3303X, "SN1", 10.0);
        run(&mut s, "TIMEr:SET CH1,1,1,1,2;TIMEr:SET CH1,2,3,0.5,2");
        run(&mut s, "OUTP CH1,ON;TIMEr CH1,ON");
        assert_eq!(run(&mut s, "SYST:STAT?"), "0x0054");
        assert_eq!(run(&mut s, "CH1:VOLT?"), "1.000");
        s.advance_timers(Duration::from_secs(3));
        assert_eq!(run(&mut s, "CH1:VOLT?;CH1:CURR?"), "3.000;0.500");
        s.advance_timers(Duration::from_secs(2));
        // Past the last group: stopped, its settings kept.
        assert_eq!(run(&mut s, "SYST:STAT?;CH1:VOLT?"), "0x0014;3.000");
        assert!(s.fixed_output().is_some_and(|f| !f.on && f.voltage == 3.3));
        assert!(s.set_fixed_voltage(5.0));
        assert!(!s.set_fixed_voltage(4.0));
        run(&mut s, "OUTP CH3,ON");
        assert!(s.fixed_output().is_some_and(|f| f.on && f.voltage == 5.0));
        assert!(PsuState::new(&DP832, "x", 10.0).fixed_output().is_none());
    }
}
