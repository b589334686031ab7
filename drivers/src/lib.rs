//! labmesh-drivers: what a relay drives.
//!
//! * [`Instrument`]: the async driver trait (`describe`, `call`, `poll`).
//! * [`DriverRegistry`]: driver name -> factory, built-ins included
//!   (`mock-psu`, `scpi`, `keysight-e36xx`, `rigol-dp8xx`,
//!   `siglent-spd3303x`), plus declarative TOML drivers
//!   ([`DriverRegistry::load_dir`], [`declarative`]).
//! * [`resource`]: PyVISA-style and URL resource strings; [`transport`]:
//!   TCP, serial, VXI-11 ([`vxi11`]), HiSLIP ([`hislip`]) and USBTMC
//!   ([`usbtmc`]) links; [`scpi`]: the SCPI session; [`block`]: IEEE 488.2
//!   binary blocks.
//! * [`psu`]: the power-supply family drivers; [`scpi_driver`]: the
//!   generic `scpi` driver; [`mock_psu`]: the in-process mock power supply.
//! * [`sim`]: simulated SCPI power supplies over TCP, streams, ptys,
//!   VXI-11 and HiSLIP.
//!
//! docs/DRIVERS.md is the user guide.

pub mod block;
pub mod builtins;
pub mod declarative;
pub mod discover;
pub mod firmware;
pub mod gpib;
pub mod hislip;
pub mod instrument;
pub mod methods;
pub mod mock_psu;
pub mod options;
pub mod psu;
pub mod registry;
pub mod resource;
pub mod scpi;
pub mod scpi_driver;
pub mod sim;
pub mod transport;
pub mod usbtmc;
pub mod vxi11;

pub use instrument::{
    Args, BindError, Description, DriverError, DriverErrorKind, Instrument, MethodSpec, ParamSpec,
    ParamType, PushStream, Sampled, StateField,
};

/// The labmesh-drivers release, reported by `lm.describe` as the driver
/// version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub use methods::MethodTable;
pub use options::{OptionSpec, OptionType};
pub use registry::{BoxInstrument, DriverRegistry, InstrumentConfig};
pub use resource::Resource;
pub use scpi::{LinkOpener, ScpiSession, SessionOptions};
