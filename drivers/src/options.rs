//! [`OptionSpec`]: the options a driver accepts, declared in one table per
//! driver and registered with its factory
//! ([`crate::DriverRegistry::register`]). The registry refuses an
//! instrument whose options name a key its driver does not declare, so a
//! typo (`timout_ms`) is an error instead of being ignored.
//!
//! The entries shared by several drivers are constants here (the SCPI
//! session's keys, the serial line's); each driver's table lists the ones
//! it reads. docs/DRIVERS.md ("Driver options") shows every table
//! ([`markdown_table`]; a test keeps the two equal).

/// The kind of value an option takes (for docs and messages; the driver
/// checks the value itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionType {
    /// `true` / `false`.
    Bool,
    /// A positive integer number of milliseconds.
    Millis,
    /// A positive integer.
    Integer,
    /// A string.
    String,
    /// A list of strings.
    Strings,
    /// One of these words.
    Choice(&'static [&'static str]),
}

impl OptionType {
    /// How the type reads in docs: `bool`, `ms`, `integer`, `string`,
    /// `list of strings`, `a \| b \| c`.
    pub fn label(self) -> String {
        match self {
            OptionType::Bool => "bool".into(),
            OptionType::Millis => "ms".into(),
            OptionType::Integer => "integer".into(),
            OptionType::String => "string".into(),
            OptionType::Strings => "list of strings".into(),
            OptionType::Choice(words) => words.join(" \\| "),
        }
    }
}

/// One option of a driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionSpec {
    /// The key in the instrument's table.
    pub name: &'static str,
    /// What it takes.
    pub ty: OptionType,
    /// One line on what it does (and its default).
    pub doc: &'static str,
}

impl OptionSpec {
    /// An option.
    pub const fn new(name: &'static str, ty: OptionType, doc: &'static str) -> Self {
        OptionSpec { name, ty, doc }
    }
}

/// `timeout_ms`: per-call timeout.
pub const TIMEOUT_MS: OptionSpec = OptionSpec::new(
    "timeout_ms",
    OptionType::Millis,
    "per-call timeout (default 2000)",
);
/// `connect_timeout_ms`: connect / open timeout.
pub const CONNECT_TIMEOUT_MS: OptionSpec = OptionSpec::new(
    "connect_timeout_ms",
    OptionType::Millis,
    "connect / open timeout (default 3000)",
);
/// `write_termination`.
pub const WRITE_TERMINATION: OptionSpec = OptionSpec::new(
    "write_termination",
    OptionType::String,
    "appended to every command (default \"\\n\")",
);
/// `read_termination`.
pub const READ_TERMINATION: OptionSpec = OptionSpec::new(
    "read_termination",
    OptionType::String,
    "ends every reply; a \"\\r\" before it is stripped too (default \"\\n\")",
);
/// `check_errors`.
pub const CHECK_ERRORS: OptionSpec = OptionSpec::new(
    "check_errors",
    OptionType::Bool,
    "query SYST:ERR? after every write and fail on an entry (default false)",
);
/// `identify`.
pub const IDENTIFY: OptionSpec = OptionSpec::new(
    "identify",
    OptionType::Bool,
    "ask *IDN? whenever the link opens (default true)",
);
/// `init`.
pub const INIT: OptionSpec = OptionSpec::new(
    "init",
    OptionType::Strings,
    "commands written after every (re)connect (default none)",
);
/// `max_reply`.
pub const MAX_REPLY: OptionSpec = OptionSpec::new(
    "max_reply",
    OptionType::Integer,
    "largest reply or binary block accepted, bytes (default 16777216)",
);
/// `drain_quiet_ms`.
pub const DRAIN_QUIET_MS: OptionSpec = OptionSpec::new(
    "drain_quiet_ms",
    OptionType::Millis,
    "serial resync: drain until quiet this long (default 100)",
);
/// `baud`.
pub const BAUD: OptionSpec = OptionSpec::new(
    "baud",
    OptionType::Integer,
    "serial baud rate, over the resource string's (default 9600)",
);
/// `baud_rate`: the same as `baud`.
pub const BAUD_RATE: OptionSpec =
    OptionSpec::new("baud_rate", OptionType::Integer, "the same as baud");
/// `data_bits`.
pub const DATA_BITS: OptionSpec = OptionSpec::new(
    "data_bits",
    OptionType::Choice(&["5", "6", "7", "8"]),
    "serial data bits (default 8)",
);
/// `parity`.
pub const PARITY: OptionSpec = OptionSpec::new(
    "parity",
    OptionType::Choice(&["none", "odd", "even"]),
    "serial parity (default none)",
);
/// `stop_bits`.
pub const STOP_BITS: OptionSpec = OptionSpec::new(
    "stop_bits",
    OptionType::Choice(&["1", "2"]),
    "serial stop bits (default 1)",
);
/// `flow`.
pub const FLOW: OptionSpec = OptionSpec::new(
    "flow",
    OptionType::Choice(&["none", "software", "hardware"]),
    "serial flow control (default none)",
);

/// `adapter`: the GPIB adapter of a `GPIBn::ADDR::INSTR` resource.
pub const ADAPTER: OptionSpec = OptionSpec::new(
    "adapter",
    OptionType::String,
    "GPIB resources: the Prologix-compatible adapter, tcp://HOST:1234 or a serial resource (no default)",
);

/// `hislip_mode`: the HiSLIP mode to ask for.
pub const HISLIP_MODE: OptionSpec = OptionSpec::new(
    "hislip_mode",
    OptionType::Choice(&["synchronized", "overlapped", "server"]),
    "HiSLIP resources: the mode asked for in the device-clear handshake (default synchronized)",
);

/// What every SCPI driver built on [`crate::ScpiSession`] accepts: the
/// session's keys and the serial line's. Declarative (TOML) drivers accept
/// exactly these.
pub const SCPI_SESSION: &[OptionSpec] = &[
    TIMEOUT_MS,
    CONNECT_TIMEOUT_MS,
    WRITE_TERMINATION,
    READ_TERMINATION,
    CHECK_ERRORS,
    IDENTIFY,
    INIT,
    MAX_REPLY,
    DRAIN_QUIET_MS,
    BAUD,
    BAUD_RATE,
    DATA_BITS,
    PARITY,
    STOP_BITS,
    FLOW,
    ADAPTER,
    HISLIP_MODE,
];

/// The first key of `options` that `known` does not declare.
pub fn unknown_key<'a>(
    options: &'a serde_json::Map<String, serde_json::Value>,
    known: &[OptionSpec],
) -> Option<&'a str> {
    options
        .keys()
        .map(String::as_str)
        .find(|k| !known.iter().any(|o| o.name == *k))
}

/// `known` as a Markdown table (`| option | type | what |`), as in
/// docs/DRIVERS.md.
pub fn markdown_table(known: &[OptionSpec]) -> String {
    let mut out = String::from("| option | type | what |\n| --- | --- | --- |\n");
    for o in known {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            o.name,
            o.ty.label(),
            o.doc
        ));
    }
    out
}
