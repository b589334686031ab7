//! Power-supply families and models: channel limits, shared by the drivers
//! (ranges in `describe()`) and the simulator (range checks, -222).

use std::fmt;
use std::str::FromStr;

use crate::DriverError;

/// A PSU command-set family (one driver, one simulator dialect each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Keysight E36xx (E36300 series, E36100 series): `APPL`, `VOLT`, `CURR`,
    /// `OUTP`, `MEAS`, `INST:NSEL`.
    KeysightE36xx,
    /// Rigol DP800 series: `:SOUR<n>:VOLT`, `:OUTP CH<n>,ON`, `:MEAS:VOLT? CH<n>`.
    RigolDp8xx,
    /// Siglent SPD3303X / SPD3303X-E: `CH1:VOLT`, `OUTP CH1,ON`, `MEAS:VOLT? CH1`.
    SiglentSpd3303x,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 3] = [
        Family::KeysightE36xx,
        Family::RigolDp8xx,
        Family::SiglentSpd3303x,
    ];

    /// The registry name of the family's driver.
    pub fn driver_name(self) -> &'static str {
        match self {
            Family::KeysightE36xx => "keysight-e36xx",
            Family::RigolDp8xx => "rigol-dp8xx",
            Family::SiglentSpd3303x => "siglent-spd3303x",
        }
    }

    /// The simulator dialect name (`keysight`, `rigol`, `siglent`).
    pub fn dialect_name(self) -> &'static str {
        match self {
            Family::KeysightE36xx => "keysight",
            Family::RigolDp8xx => "rigol",
            Family::SiglentSpd3303x => "siglent",
        }
    }

    /// The model used when none is named.
    pub fn default_model(self) -> &'static PsuModel {
        match self {
            Family::KeysightE36xx => &E36313A,
            Family::RigolDp8xx => &DP832,
            Family::SiglentSpd3303x => &SPD3303X,
        }
    }

    /// Models of this family.
    pub fn models(self) -> impl Iterator<Item = &'static PsuModel> {
        MODELS.iter().filter(move |m| m.family == self)
    }

    /// Find a model of this family by name (case-insensitive).
    pub fn model(self, name: &str) -> Result<&'static PsuModel, DriverError> {
        self.models()
            .find(|m| m.model.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                DriverError::Config(format!(
                    "unknown {} model '{name}' (known: {})",
                    self.driver_name(),
                    self.models()
                        .map(|m| m.model)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }
}

impl FromStr for Family {
    type Err = DriverError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Family::ALL
            .into_iter()
            .find(|f| {
                s.eq_ignore_ascii_case(f.dialect_name()) || s.eq_ignore_ascii_case(f.driver_name())
            })
            .ok_or_else(|| {
                DriverError::Config(format!(
                    "unknown PSU dialect '{s}' (known: keysight, rigol, siglent)"
                ))
            })
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dialect_name())
    }
}

/// Limits of one output channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelLimits {
    /// Front-panel name.
    pub name: &'static str,
    /// Highest settable voltage, V.
    pub max_voltage: f64,
    /// Highest settable current limit, A.
    pub max_current: f64,
}

/// One PSU model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PsuModel {
    /// Command-set family.
    pub family: Family,
    /// Model name as `*IDN?` reports it.
    pub model: &'static str,
    /// Programmable channels, numbered from 1.
    pub channels: &'static [ChannelLimits],
}

const fn ch(name: &'static str, max_voltage: f64, max_current: f64) -> ChannelLimits {
    ChannelLimits {
        name,
        max_voltage,
        max_current,
    }
}

/// Keysight E36313A: 6 V/10 A, 25 V/2 A, 25 V/2 A.
pub const E36313A: PsuModel = PsuModel {
    family: Family::KeysightE36xx,
    model: "E36313A",
    channels: &[
        ch("CH1", 6.0, 10.0),
        ch("CH2", 25.0, 2.0),
        ch("CH3", 25.0, 2.0),
    ],
};
/// Keysight E36312A: 6 V/5 A, 25 V/1 A, 25 V/1 A.
pub const E36312A: PsuModel = PsuModel {
    family: Family::KeysightE36xx,
    model: "E36312A",
    channels: &[
        ch("CH1", 6.0, 5.0),
        ch("CH2", 25.0, 1.0),
        ch("CH3", 25.0, 1.0),
    ],
};
/// Keysight E36103B: one output, 20 V/2 A.
pub const E36103B: PsuModel = PsuModel {
    family: Family::KeysightE36xx,
    model: "E36103B",
    channels: &[ch("CH1", 20.0, 2.0)],
};
/// Rigol DP832: 30 V/3 A, 30 V/3 A, 5 V/3 A.
pub const DP832: PsuModel = PsuModel {
    family: Family::RigolDp8xx,
    model: "DP832",
    channels: &[
        ch("CH1", 30.0, 3.0),
        ch("CH2", 30.0, 3.0),
        ch("CH3", 5.0, 3.0),
    ],
};
/// Rigol DP821: 60 V/1 A, 8 V/10 A.
pub const DP821: PsuModel = PsuModel {
    family: Family::RigolDp8xx,
    model: "DP821",
    channels: &[ch("CH1", 60.0, 1.0), ch("CH2", 8.0, 10.0)],
};
/// Rigol DP811 (low range): 20 V/10 A.
pub const DP811: PsuModel = PsuModel {
    family: Family::RigolDp8xx,
    model: "DP811",
    channels: &[ch("CH1", 20.0, 10.0)],
};
/// Siglent SPD3303X: two programmable 32 V/3.2 A channels (CH3 is fixed).
pub const SPD3303X: PsuModel = PsuModel {
    family: Family::SiglentSpd3303x,
    model: "SPD3303X",
    channels: &[ch("CH1", 32.0, 3.2), ch("CH2", 32.0, 3.2)],
};
/// Siglent SPD3303X-E: as the SPD3303X.
pub const SPD3303X_E: PsuModel = PsuModel {
    family: Family::SiglentSpd3303x,
    model: "SPD3303X-E",
    channels: &[ch("CH1", 32.0, 3.2), ch("CH2", 32.0, 3.2)],
};

/// Every known model.
pub const MODELS: &[PsuModel] = &[
    E36313A, E36312A, E36103B, DP832, DP821, DP811, SPD3303X, SPD3303X_E,
];
