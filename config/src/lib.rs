//! labmesh-config: the labmesh TOML file, read as the Python package writes
//! it (`[broker]`, `[relay]`, `[bank]`, `[client]` with the same keys), plus
//! extension tables (`[[relay.instruments]]`).
//!
//! Unknown keys are reported as [`Warning`]s naming the file and the key;
//! invalid values are [`ConfigError`]s naming the file, the key and why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use labmesh_proto::endpoint::{public_endpoint, resolve_broker};
use labmesh_proto::limits;

pub mod lan;
pub use lan::LanSection;
pub mod security;
pub use security::SecuritySection;

/// A configuration problem that stops a node from starting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a value has the wrong type.
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// The parser's message (it names the key and line).
        message: String,
    },
    /// A value has the right type but is not acceptable.
    #[error("{file}: {key}: {why}")]
    Invalid {
        /// The file (or `<defaults>`).
        file: PathBuf,
        /// Dotted key path, e.g. `relay.state_interval`.
        key: String,
        /// What is wrong.
        why: String,
    },
}

/// Something worth telling the operator that does not stop the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The file.
    pub file: PathBuf,
    /// Dotted key path.
    pub key: String,
    /// What is odd about it.
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
    }
}

/// `[broker]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BrokerSection {
    /// Directory ROUTER bind.
    pub rpc_bind: String,
    /// XSUB bind: relays' and banks' PUB sockets connect here.
    pub xsub_bind: String,
    /// XPUB bind: clients' SUB sockets connect here.
    pub xpub_bind: String,
    /// Seconds without a sign of life before a registration expires.
    pub ttl_seconds: Seconds,
    /// The broker's host, substituted for `BROKER` in endpoints.
    pub address: String,
    /// Extension: high-water mark of the bus sockets (labmesh uses 4000),
    /// lowered where needed so a full queue stays within `bus_budget`.
    pub hwm: i32,
    /// Extension: relays plus banks the directory keeps at most (a hello
    /// beyond it is refused with 503).
    pub max_registrations: usize,
    /// Extension: largest message a publisher may put on the bus, bytes.
    pub bus_max_msg: usize,
    /// Extension: bytes queued at most for one slow bus peer.
    pub bus_budget: usize,
    /// Extension (cascading): the parent broker's directory endpoint; this
    /// broker registers its relays and banks there. All three `parent_*`
    /// keys go together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_rpc: Option<String>,
    /// Extension (cascading): the parent's bus XSUB endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_xsub: Option<String>,
    /// Extension (cascading): the parent's bus XPUB endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_xpub: Option<String>,
    /// Extension (cascading): how this broker's relays and banks are listed
    /// in the parent: at their own endpoints (`"direct"`), or at gateway
    /// endpoints of this broker that forward to them (`"gateway"`).
    pub advertise: Advertise,
    /// Extension (cascading, `advertise = "gateway"`): where the gateway's
    /// endpoints are bound, one fresh port each (`tcp://*:*`, or an
    /// interface: `tcp://10.1.0.2:*`); advertised with `address`.
    pub gateway_bind: String,
}

/// `[broker] advertise`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Advertise {
    /// The parent lists each node at its own endpoint.
    #[default]
    Direct,
    /// The parent lists each node at a gateway endpoint of this broker.
    Gateway,
}

impl Default for BrokerSection {
    fn default() -> Self {
        BrokerSection {
            rpc_bind: "tcp://*:5750".into(),
            xsub_bind: "tcp://*:5751".into(),
            xpub_bind: "tcp://*:5752".into(),
            ttl_seconds: Seconds::of(limits::DEFAULT_TTL),
            address: "127.0.0.1".into(),
            hwm: 4000,
            max_registrations: limits::DEFAULT_MAX_REGISTRATIONS,
            bus_max_msg: limits::DEFAULT_BUS_MAX_MSG,
            bus_budget: limits::DEFAULT_BUS_BUDGET,
            parent_rpc: None,
            parent_xsub: None,
            parent_xpub: None,
            advertise: Advertise::Direct,
            gateway_bind: "tcp://*:*".into(),
        }
    }
}

/// One `[[relay.instruments]]` table (extension).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstrumentSection {
    /// Relay id on the mesh.
    pub id: String,
    /// Driver name in the registry.
    pub driver: String,
    /// Resource string (`TCPIP::host::5025::SOCKET`, `tcp://host:5025`,
    /// `ASRL/dev/ttyUSB0::INSTR`, `serial:///dev/ttyUSB0?baud=9600`).
    #[serde(default)]
    pub resource: Option<String>,
    /// Seconds between polls / state messages (default `[relay]
    /// state_interval`).
    #[serde(default)]
    pub poll_interval: Option<Seconds>,
    /// RPC bind for this instrument (default: `[relay] default_rpc_bind`
    /// for the first instrument, an ephemeral port for the others).
    #[serde(default)]
    pub rpc_bind: Option<String>,
    /// Seconds one call may take before it fails with 408 (default 10).
    #[serde(default)]
    pub call_timeout: Option<Seconds>,
    /// Streams: `streams = [{ name, method, params, hz, enabled }]`
    /// (extension; see `labmesh_proto::stream::StreamSpec`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<labmesh_proto::stream::StreamSpec>,
    /// The relay's LAN-instrument gateway for this instrument:
    /// `lan = { raw = "0.0.0.0:5025", vxi11 = true, hislip = true }`
    /// (extension; see [`LanSection`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan: Option<LanSection>,
    /// Driver-specific options: every other key of the table.
    #[serde(flatten)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

impl InstrumentSection {
    /// The driver options: the table's other keys, with an `options = {...}`
    /// sub-table (if any) merged in (its keys win).
    pub fn driver_options(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut out = self.options.clone();
        if let Some(serde_json::Value::Object(inner)) = out.remove("options") {
            out.extend(inner);
        }
        out
    }
}

/// `[relay]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RelaySection {
    /// RPC bind of a relay that does not name its own.
    pub default_rpc_bind: String,
    /// Seconds between state messages.
    pub state_interval: Seconds,
    /// Broker directory endpoint (may contain `BROKER`).
    pub broker_rpc: String,
    /// Broker XSUB endpoint (may contain `BROKER`).
    pub broker_xsub: String,
    /// Seconds between heartbeats.
    pub heartbeat_seconds: Seconds,
    /// Seconds to wait for a bank's answer during an upload.
    pub upload_timeout: Seconds,
    /// How many times an upload step is retried.
    pub upload_retries: u32,
    /// Upload chunk size in bytes.
    pub upload_chunk: usize,
    /// Host put in place of `*` when advertising the RPC endpoint.
    pub default_address: String,
    /// Extension: directories of declarative (TOML) drivers.
    pub driver_dirs: Vec<PathBuf>,
    /// Extension: instruments this relay hosts.
    pub instruments: Vec<InstrumentSection>,
}

impl Default for RelaySection {
    fn default() -> Self {
        RelaySection {
            default_rpc_bind: "tcp://*:5850".into(),
            state_interval: Seconds::whole(1),
            broker_rpc: "tcp://BROKER:5750".into(),
            broker_xsub: "tcp://BROKER:5751".into(),
            heartbeat_seconds: Seconds::of(limits::DEFAULT_HEARTBEAT),
            upload_timeout: Seconds::of(limits::DEFAULT_UPLOAD_TIMEOUT),
            upload_retries: 5,
            upload_chunk: limits::DEFAULT_UPLOAD_CHUNK,
            default_address: "127.0.0.1".into(),
            driver_dirs: Vec::new(),
            instruments: Vec::new(),
        }
    }
}

/// `[bank]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BankSection {
    /// Ingest ROUTER bind.
    pub ingest_bind: String,
    /// Retrieve ROUTER bind.
    pub retrieve_bind: String,
    /// Where datasets are stored.
    pub default_data_dir: PathBuf,
    /// Broker directory endpoint.
    pub broker_rpc: String,
    /// Broker XSUB endpoint.
    pub broker_xsub: String,
    /// Seconds between heartbeats.
    pub heartbeat_seconds: Seconds,
    /// Host put in place of `*` when advertising.
    pub default_address: String,
    /// Upload sessions open at once, all peers together.
    pub max_upload_sessions: usize,
    /// Upload sessions one peer may hold open at once.
    pub max_upload_sessions_per_peer: usize,
    /// Bytes all unfinished uploads may hold on disk.
    pub partial_quota_bytes: u64,
    /// Downloads served at once, all peers together.
    pub max_downloads: usize,
    /// Downloads one peer may run at once.
    pub max_downloads_per_peer: usize,
    /// Bytes read ahead for one credit-mode download.
    pub download_buffer_bytes: usize,
    /// Extension: where dataset content lives (`"file"`, the default, or
    /// `"s3"` with a `[bank.s3]` table).
    pub storage: StorageKind,
    /// Extension: `[bank.s3]`, the bucket for `storage = "s3"`.
    pub s3: S3Section,
}

/// `[bank] storage`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// `data_dir/objects/<id>.bin`.
    #[default]
    File,
    /// An S3-compatible bucket.
    S3,
}

/// `[bank.s3]`: an S3-compatible bucket. Credentials are not configured
/// here: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` in the environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct S3Section {
    /// `http://127.0.0.1:8333`; empty = AWS (or `AWS_ENDPOINT`).
    pub endpoint: String,
    /// Bucket name (required with `storage = "s3"`).
    pub bucket: String,
    /// Key prefix; banks sharing a prefix serve each other's datasets.
    pub prefix: String,
    /// Region.
    pub region: String,
    /// Multipart part size, bytes (at least 5 MiB).
    pub part_size: usize,
    /// Seconds between re-listings of the bucket (0 = never).
    pub relist_seconds: f64,
}

impl Default for S3Section {
    fn default() -> Self {
        S3Section {
            endpoint: String::new(),
            bucket: String::new(),
            prefix: String::new(),
            region: "us-east-1".into(),
            part_size: 8 * 1024 * 1024,
            relist_seconds: 30.0,
        }
    }
}

impl Default for BankSection {
    fn default() -> Self {
        BankSection {
            ingest_bind: "tcp://*:5761".into(),
            retrieve_bind: "tcp://*:5762".into(),
            default_data_dir: PathBuf::from("./bank_data"),
            broker_rpc: "tcp://BROKER:5750".into(),
            broker_xsub: "tcp://BROKER:5751".into(),
            heartbeat_seconds: Seconds::of(limits::DEFAULT_HEARTBEAT),
            default_address: "127.0.0.1".into(),
            max_upload_sessions: limits::DEFAULT_MAX_UPLOAD_SESSIONS,
            max_upload_sessions_per_peer: limits::DEFAULT_MAX_UPLOAD_SESSIONS_PER_PEER,
            partial_quota_bytes: limits::DEFAULT_PARTIAL_QUOTA,
            max_downloads: limits::DEFAULT_MAX_DOWNLOADS,
            max_downloads_per_peer: limits::DEFAULT_MAX_DOWNLOADS_PER_PEER,
            download_buffer_bytes: limits::DEFAULT_DOWNLOAD_BUFFER,
            storage: StorageKind::File,
            s3: S3Section::default(),
        }
    }
}

/// `[client]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientSection {
    /// Broker directory endpoint.
    pub broker_rpc: String,
    /// Broker XPUB endpoint.
    pub broker_xpub: String,
    /// The client's own host (unused by the client; kept for labmesh).
    pub default_address: String,
    /// Extension: seconds a call may take before the client gives up
    /// (default 15 = `limits::DEFAULT_CLIENT_TIMEOUT`: longer than a relay's
    /// default 10 s call deadline, so
    /// the relay's 408 arrives before the client stops waiting).
    pub timeout_seconds: Seconds,
}

impl Default for ClientSection {
    fn default() -> Self {
        ClientSection {
            broker_rpc: "tcp://BROKER:5750".into(),
            broker_xpub: "tcp://BROKER:5752".into(),
            default_address: "127.0.0.1".into(),
            timeout_seconds: Seconds::of(limits::DEFAULT_CLIENT_TIMEOUT),
        }
    }
}

/// `[web]` (extension): the dashboard node, `labmesh web`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebSection {
    /// HTTP listen address, `host:port` (loopback by default: on any other
    /// address state-changing actions need the operator token).
    pub listen: String,
    /// The operator token (prefer `token_file`, kept out of the config).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A file holding the operator token (surrounding whitespace trimmed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Bytes queued per browser before the oldest messages are dropped.
    pub ws_queue_bytes: usize,
    /// At most this many browsers connected at once.
    pub max_clients: usize,
    /// Numeric state fields as Prometheus gauges on `/metrics`: `false`
    /// (default), `true` (every field of every relay) or a list of
    /// `field` / `relay.field` names.
    #[serde(skip_serializing_if = "WebGauges::is_off")]
    pub gauges: WebGauges,
}

/// `[web] gauges`: `true`/`false`, or the fields to export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WebGauges {
    /// All or none.
    All(bool),
    /// Only these (`field` of any relay, or `relay.field`).
    Fields(Vec<String>),
}

impl Default for WebGauges {
    fn default() -> Self {
        WebGauges::All(false)
    }
}

impl WebGauges {
    /// No gauges.
    pub fn is_off(&self) -> bool {
        matches!(self, WebGauges::All(false))
    }
}

impl Default for WebSection {
    fn default() -> Self {
        WebSection {
            listen: "127.0.0.1:8080".into(),
            token: None,
            token_file: None,
            ws_queue_bytes: 256 * 1024,
            max_clients: 256,
            gauges: WebGauges::default(),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `[broker]`
    pub broker: BrokerSection,
    /// `[relay]`
    pub relay: RelaySection,
    /// `[bank]`
    pub bank: BankSection,
    /// `[client]`
    pub client: ClientSection,
    /// `[web]` (extension)
    pub web: WebSection,
    /// `[security]` (extension): CURVE keys and the allow-list.
    pub security: SecuritySection,
    /// The file this configuration was read from (set by [`Config::load`]
    /// and [`Config::parse`]; `None` for the built-in defaults), for
    /// messages about its values that other crates check.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// A number of seconds that is usable as a timer period or deadline:
/// finite, positive, below 10^9 s and at least one nanosecond. The only
/// ways to make one check that ([`Seconds::new`], `TryFrom<f64>`,
/// `FromStr`, deserializing), so [`Seconds::duration`] is never zero.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Seconds(f64);

/// Why a number is not a usable [`Seconds`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("must be a positive number of seconds, got {0}")]
pub struct BadSeconds(pub f64);

impl Seconds {
    /// `s` seconds, if finite, positive, below 10^9 and not below 1 ns.
    pub fn new(s: f64) -> Result<Seconds, BadSeconds> {
        let ok = s.is_finite()
            && s < 1.0e9
            && Duration::try_from_secs_f64(s).is_ok_and(|d| !d.is_zero());
        if ok {
            Ok(Seconds(s))
        } else {
            Err(BadSeconds(s))
        }
    }

    /// A whole number of seconds, for defaults (`n` must not be 0).
    const fn whole(n: u32) -> Seconds {
        Seconds(n as f64)
    }

    /// A default taken from `labmesh_proto::limits` (never zero there).
    const fn of(d: Duration) -> Seconds {
        Seconds(d.as_secs_f64())
    }

    /// The number of seconds.
    pub fn get(self) -> f64 {
        self.0
    }

    /// As a `Duration` (never zero).
    pub fn duration(self) -> Duration {
        Duration::try_from_secs_f64(self.0).unwrap_or(Duration::from_nanos(1))
    }
}

impl TryFrom<f64> for Seconds {
    type Error = BadSeconds;
    fn try_from(s: f64) -> Result<Seconds, BadSeconds> {
        Seconds::new(s)
    }
}

impl From<Seconds> for f64 {
    fn from(s: Seconds) -> f64 {
        s.0
    }
}

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The shortest period between state messages (`[relay] state_interval`,
/// an instrument's `poll_interval`, `labmesh relay --state-interval`):
/// 10 ms, i.e. at most 100 state messages a second per relay. Faster data
/// belongs on a stream.
pub const MIN_STATE_INTERVAL: f64 = 0.01;

/// Whether `s` is a usable period between state messages: at least
/// [`MIN_STATE_INTERVAL`] (it is already a valid [`Seconds`]).
pub fn check_interval(s: Seconds) -> Result<(), String> {
    if s.get() >= MIN_STATE_INTERVAL {
        Ok(())
    } else {
        Err(format!(
            "must be at least {MIN_STATE_INTERVAL} s (100 state messages a second), got {s}"
        ))
    }
}

/// Whether `v` is a ZeroMQ endpoint a node can bind or connect:
/// `ipc://PATH`, `inproc://NAME`, or `tcp://HOST:PORT` where PORT is
/// 0..=65535 or `*` (any free port, binds only) and HOST is not empty
/// (`*`, a name, an address, `[v6]`, or `BROKER`). The one check behind
/// every endpoint key of the file and every endpoint flag of the CLI.
pub fn check_endpoint(v: &str) -> Result<(), String> {
    let not = || format!("{v:?} is not a ZeroMQ endpoint (tcp://host:port, ipc://path)");
    if v.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(not());
    }
    if let Some(rest) = v.strip_prefix("tcp://") {
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(format!(
                "{v:?}: a tcp endpoint needs a port (tcp://host:port)"
            ));
        };
        if host.is_empty() {
            return Err(format!(
                "{v:?}: no host (use tcp://*:{port} to bind every interface)"
            ));
        }
        if port != "*" && port.parse::<u16>().is_err() {
            return Err(format!(
                "{v:?}: port {port:?} is not 0..=65535 or * (any free port)"
            ));
        }
        return Ok(());
    }
    let ok = ["ipc://", "inproc://"]
        .iter()
        .any(|p| v.starts_with(p) && v.len() > p.len());
    if ok {
        Ok(())
    } else {
        Err(not())
    }
}

/// The dotted key whose value starts at byte `at` of `text`
/// (`relay.state_interval`, `relay.instruments[1].poll_interval`), for
/// messages; `None` when the line does not look like `key = value`.
fn key_at(text: &str, at: usize) -> Option<String> {
    let before = text.get(..at)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let key = before.get(line_start..)?.split('=').next()?.trim();
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let mut table = String::new();
    let mut arrays = std::collections::HashMap::<&str, usize>::new();
    for line in before.get(..line_start)?.lines() {
        let l = line.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let n = arrays.entry(name.trim()).or_insert(0);
            table = format!("{}[{}]", name.trim(), n);
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_string();
        }
    }
    Some(if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    })
}

impl Config {
    /// Parse `text` (read from `file`, used in messages).
    pub fn parse(text: &str, file: &Path) -> Result<(Config, Vec<Warning>), ConfigError> {
        let mut warnings = Vec::new();
        let de = toml::Deserializer::new(text);
        let cfg: Config = serde_ignored::deserialize(de, |path| {
            warnings.push(Warning {
                file: file.to_path_buf(),
                key: path.to_string(),
                message: "unknown key (ignored)".to_string(),
            });
        })
        .map_err(|e| {
            let message = e.to_string().trim_end().to_string();
            let key = e.span().and_then(|span| key_at(text, span.start));
            ConfigError::Parse {
                file: file.to_path_buf(),
                message: match key {
                    Some(k) => format!("{k}: {message}"),
                    None => message,
                },
            }
        })?;
        cfg.validate(file)?;
        Ok((
            Config {
                file: Some(file.to_path_buf()),
                ..cfg
            },
            warnings,
        ))
    }

    /// Read and parse `path`.
    pub fn load(path: &Path) -> Result<(Config, Vec<Warning>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Read `path` if it exists; the labmesh defaults otherwise (`Ok(None)`
    /// path in the result tells which).
    pub fn load_or_default(
        path: &Path,
    ) -> Result<(Config, Vec<Warning>, Option<PathBuf>), ConfigError> {
        if path.exists() {
            let (c, w) = Config::load(path)?;
            Ok((c, w, Some(path.to_path_buf())))
        } else {
            Ok((Config::default(), Vec::new(), None))
        }
    }

    /// Check every value; errors name `file`, the key and why.
    pub fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            key: key.to_string(),
            why,
        };
        let endpoint = |key: &str, v: &str| check_endpoint(v).map_err(|why| bad(key, why));
        self.security.validate(file)?;
        endpoint("broker.rpc_bind", &self.broker.rpc_bind)?;
        endpoint("broker.xsub_bind", &self.broker.xsub_bind)?;
        endpoint("broker.xpub_bind", &self.broker.xpub_bind)?;
        endpoint("broker.gateway_bind", &self.broker.gateway_bind)?;
        if !self.broker.gateway_bind.ends_with(":*") {
            return Err(bad(
                "broker.gateway_bind",
                "each proxied endpoint gets a port of its own: the port must be `*`".into(),
            ));
        }
        {
            let b = &self.broker;
            let parent = [
                ("broker.parent_rpc", &b.parent_rpc),
                ("broker.parent_xsub", &b.parent_xsub),
                ("broker.parent_xpub", &b.parent_xpub),
            ];
            let set = parent.iter().filter(|(_, v)| v.is_some()).count();
            if set != 0 && set != 3 {
                let missing: Vec<&str> = parent
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(k, _)| *k)
                    .collect();
                return Err(bad(
                    missing[0],
                    format!("a parent broker needs all of parent_rpc, parent_xsub and parent_xpub (missing {})", missing.join(", ")),
                ));
            }
            for (key, v) in parent {
                if let Some(ep) = v {
                    endpoint(key, ep)?;
                }
            }
        }
        if self.broker.hwm < 0 {
            return Err(bad("broker.hwm", "must be 0 (unlimited) or more".into()));
        }
        if self.broker.address.is_empty() {
            return Err(bad("broker.address", "must not be empty".into()));
        }
        if !(1..=1_000_000).contains(&self.broker.max_registrations) {
            return Err(bad(
                "broker.max_registrations",
                format!("must be 1..=1000000, got {}", self.broker.max_registrations),
            ));
        }
        if !(1024..=limits::DEFAULT_MAX_MSG).contains(&self.broker.bus_max_msg) {
            return Err(bad(
                "broker.bus_max_msg",
                format!(
                    "must be 1024..={} bytes, got {}",
                    limits::DEFAULT_MAX_MSG,
                    self.broker.bus_max_msg
                ),
            ));
        }
        if self.broker.bus_budget < self.broker.bus_max_msg {
            return Err(bad(
                "broker.bus_budget",
                format!(
                    "must be at least bus_max_msg ({} bytes), got {}",
                    self.broker.bus_max_msg, self.broker.bus_budget
                ),
            ));
        }
        check_interval(self.relay.state_interval)
            .map_err(|why| bad("relay.state_interval", why))?;
        endpoint("relay.default_rpc_bind", &self.relay.default_rpc_bind)?;
        endpoint("relay.broker_rpc", &self.relay.broker_rpc)?;
        endpoint("relay.broker_xsub", &self.relay.broker_xsub)?;
        if self.relay.upload_chunk == 0 || self.relay.upload_chunk > limits::MAX_UPLOAD_CHUNK {
            return Err(bad(
                "relay.upload_chunk",
                format!(
                    "must be 1..={} bytes, got {}",
                    limits::MAX_UPLOAD_CHUNK,
                    self.relay.upload_chunk
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, inst) in self.relay.instruments.iter().enumerate() {
            let key = |k: &str| format!("relay.instruments[{i}].{k}");
            if !labmesh_proto::mesh::valid_node_id(&inst.id) {
                return Err(bad(
                    &key("id"),
                    format!(
                        "{:?} is not a relay id: 1..={} of letters, digits, '.', '_', '-'",
                        inst.id,
                        limits::MAX_NODE_ID
                    ),
                ));
            }
            if !seen.insert(inst.id.as_str()) {
                return Err(bad(
                    &key("id"),
                    format!("duplicate instrument id {:?}", inst.id),
                ));
            }
            if let Some(b) = &inst.rpc_bind {
                endpoint(&key("rpc_bind"), b)?;
            }
            if let Some(p) = inst.poll_interval {
                check_interval(p).map_err(|why| bad(&key("poll_interval"), why))?;
            }
            if inst.streams.len() > labmesh_proto::stream::MAX_STREAMS {
                return Err(bad(
                    &key("streams"),
                    format!(
                        "at most {} streams per instrument, got {}",
                        labmesh_proto::stream::MAX_STREAMS,
                        inst.streams.len()
                    ),
                ));
            }
            if let Some(lan) = &inst.lan {
                lan.check().map_err(|why| bad(&key("lan"), why))?;
            }
            let mut names = std::collections::HashSet::new();
            for (j, st) in inst.streams.iter().enumerate() {
                let skey = format!("relay.instruments[{i}].streams[{j}]");
                st.check().map_err(|why| bad(&skey, why))?;
                if !names.insert(st.name.as_str()) {
                    return Err(bad(&skey, format!("duplicate stream name {:?}", st.name)));
                }
            }
        }
        endpoint("bank.ingest_bind", &self.bank.ingest_bind)?;
        endpoint("bank.retrieve_bind", &self.bank.retrieve_bind)?;
        endpoint("bank.broker_rpc", &self.bank.broker_rpc)?;
        endpoint("bank.broker_xsub", &self.bank.broker_xsub)?;
        let b = &self.bank;
        let at_least_one = [
            ("bank.max_upload_sessions", b.max_upload_sessions as u64),
            (
                "bank.max_upload_sessions_per_peer",
                b.max_upload_sessions_per_peer as u64,
            ),
            ("bank.partial_quota_bytes", b.partial_quota_bytes),
            ("bank.max_downloads", b.max_downloads as u64),
            (
                "bank.max_downloads_per_peer",
                b.max_downloads_per_peer as u64,
            ),
            ("bank.download_buffer_bytes", b.download_buffer_bytes as u64),
        ];
        for (key, v) in at_least_one {
            if v == 0 {
                return Err(bad(key, "must be at least 1".into()));
            }
        }
        if b.max_upload_sessions_per_peer > b.max_upload_sessions {
            return Err(bad(
                "bank.max_upload_sessions_per_peer",
                format!(
                    "must not exceed bank.max_upload_sessions ({})",
                    b.max_upload_sessions
                ),
            ));
        }
        if b.max_downloads_per_peer > b.max_downloads {
            return Err(bad(
                "bank.max_downloads_per_peer",
                format!("must not exceed bank.max_downloads ({})", b.max_downloads),
            ));
        }
        if b.storage == StorageKind::S3 && b.s3.bucket.is_empty() {
            return Err(bad(
                "bank.s3.bucket",
                "storage = \"s3\" needs a bucket".into(),
            ));
        }
        if b.s3.part_size < 5 * 1024 * 1024 {
            return Err(bad(
                "bank.s3.part_size",
                format!(
                    "must be at least 5 MiB (5242880), the S3 minimum, got {}",
                    b.s3.part_size
                ),
            ));
        }
        if !(b.s3.relist_seconds >= 0.0 && b.s3.relist_seconds.is_finite()) {
            return Err(bad(
                "bank.s3.relist_seconds",
                "must be 0 or more seconds".into(),
            ));
        }
        endpoint("client.broker_rpc", &self.client.broker_rpc)?;
        endpoint("client.broker_xpub", &self.client.broker_xpub)?;
        if self.web.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(
                "web.listen",
                format!(
                    "{:?} is not an address (ip:port, e.g. 127.0.0.1:8080)",
                    self.web.listen
                ),
            ));
        }
        if self
            .web
            .token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(bad("web.token", "must not be empty".into()));
        }
        if self.web.ws_queue_bytes < 1024 {
            return Err(bad("web.ws_queue_bytes", "must be at least 1024".into()));
        }
        if self.web.max_clients == 0 {
            return Err(bad("web.max_clients", "must be at least 1".into()));
        }
        Ok(())
    }

    /// An endpoint with `BROKER` replaced by `[broker] address`.
    pub fn at_broker(&self, endpoint: &str) -> String {
        resolve_broker(endpoint, &self.broker.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_section_parses_and_validates() {
        let (c, w) = Config::parse(
            "[web]\nlisten = \"0.0.0.0:9000\"\ntoken_file = \"/etc/labmesh/token\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.web.listen, "0.0.0.0:9000");
        assert_eq!(
            c.web.token_file.as_deref(),
            Some(Path::new("/etc/labmesh/token"))
        );
        assert_eq!(Config::default().web.listen, "127.0.0.1:8080");
        let e = Config::parse("[web]\nlisten = \"localhost\"\n", Path::new("t.toml")).unwrap_err();
        assert!(e.to_string().contains("web.listen"), "{e}");
        assert!(Config::default().web.gauges.is_off());
        let (c, w) = Config::parse("[web]\ngauges = true\n", Path::new("t.toml")).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.web.gauges, WebGauges::All(true));
        let (c, _) = Config::parse(
            "[web]\ngauges = [\"voltage\", \"psu-1.current\"]\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(
            c.web.gauges,
            WebGauges::Fields(vec!["voltage".into(), "psu-1.current".into()])
        );
    }

    fn shipped() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../labmesh.toml")).unwrap()
    }

    #[test]
    fn shipped_file_is_the_labmesh_defaults() {
        let (c, w) = Config::parse(&shipped(), Path::new("labmesh.toml")).unwrap();
        assert!(w.is_empty(), "{w:?}");
        let d = Config::default();
        assert_eq!(c.broker, d.broker);
        assert_eq!(c.bank, d.bank);
        assert_eq!(c.client, d.client);
        assert_eq!(c.relay, d.relay);
        assert_eq!(c.at_broker(&c.relay.broker_rpc), "tcp://127.0.0.1:5750");
    }

    #[test]
    fn unknown_keys_warn_with_file_and_key() {
        let (_, w) = Config::parse(
            "[relay]\nstate_intervall = 2\n[bogus]\nx=1\n",
            Path::new("lab.toml"),
        )
        .unwrap();
        let keys: Vec<_> = w.iter().map(|w| w.key.as_str()).collect();
        assert!(keys.contains(&"relay.state_intervall"), "{keys:?}");
        assert!(keys.contains(&"bogus"), "{keys:?}");
        assert!(w[0].to_string().starts_with("lab.toml: "));
    }

    #[test]
    fn endpoints_need_a_port_in_range_or_star() {
        for ok in [
            "tcp://*:*",
            "tcp://127.0.0.1:0",
            "tcp://127.0.0.1:65535",
            "tcp://BROKER:5750",
            "tcp://[::1]:5750",
            "ipc:///tmp/x",
            "inproc://a",
        ] {
            assert_eq!(check_endpoint(ok), Ok(()), "{ok}");
        }
        for bad in [
            "tcp://127.0.0.1:99999",
            "tcp://127.0.0.1:65536",
            "tcp://127.0.0.1:-1",
            "tcp://127.0.0.1",
            "tcp://:5750",
            "tcp://h:",
            "localhost:1",
            "ipc://",
            "tcp://a b:1",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad} accepted");
        }
        let e = Config::parse(
            "[relay]\ndefault_rpc_bind = \"tcp://127.0.0.1:99999\"\n",
            Path::new("lab.toml"),
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("relay.default_rpc_bind") && s.contains("65535"),
            "{s}"
        );
    }

    #[test]
    fn state_intervals_below_10ms_are_refused() {
        let e =
            Config::parse("[relay]\nstate_interval = 1e-9\n", Path::new("lab.toml")).unwrap_err();
        assert!(e.to_string().contains("relay.state_interval"), "{e}");
        let e = Config::parse(
            "[[relay.instruments]]\nid = \"a\"\ndriver = \"mock-psu\"\npoll_interval = 0.001\n",
            Path::new("lab.toml"),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("relay.instruments[0].poll_interval"),
            "{e}"
        );
        assert!(Config::parse("[relay]\nstate_interval = 0.01\n", Path::new("l")).is_ok());
    }

    #[test]
    fn invalid_values_name_file_key_and_why() {
        let e = Config::parse("[relay]\nstate_interval = -1\n", Path::new("lab.toml")).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("lab.toml") && s.contains("relay.state_interval") && s.contains("positive"),
            "{s}"
        );
        let e = Config::parse(
            "[broker]\nrpc_bind = \"localhost:1\"\n",
            Path::new("lab.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("broker.rpc_bind"), "{e}");
        let e =
            Config::parse("[broker]\nttl_seconds = \"x\"\n", Path::new("lab.toml")).unwrap_err();
        assert!(
            e.to_string().contains("lab.toml") && e.to_string().contains("ttl_seconds"),
            "{e}"
        );
    }

    #[test]
    fn bank_s3_storage_parses_and_needs_a_bucket() {
        let (c, w) = Config::parse(
            "[bank]\nstorage = \"s3\"\n[bank.s3]\nendpoint = \"http://127.0.0.1:8333\"\nbucket = \"lab\"\nprefix = \"banks/a\"\n",
            Path::new("l"),
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.bank.storage, StorageKind::S3);
        assert_eq!(c.bank.s3.bucket, "lab");
        assert_eq!(c.bank.s3.prefix, "banks/a");
        assert_eq!(c.bank.s3.region, "us-east-1");
        let (d, _) = Config::parse("", Path::new("l")).unwrap();
        assert_eq!(d.bank.storage, StorageKind::File);
        for (text, key) in [
            ("[bank]\nstorage = \"s3\"\n", "bank.s3.bucket"),
            ("[bank.s3]\npart_size = 1024\n", "bank.s3.part_size"),
        ] {
            let e = Config::parse(text, Path::new("l")).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        assert!(Config::parse("[bank]\nstorage = \"tape\"\n", Path::new("l")).is_err());
    }

    #[test]
    fn bank_limits_must_be_positive_and_per_peer_within_total() {
        for (text, key) in [
            (
                "[bank]\nmax_upload_sessions = 0\n",
                "bank.max_upload_sessions",
            ),
            (
                "[bank]\npartial_quota_bytes = 0\n",
                "bank.partial_quota_bytes",
            ),
            (
                "[bank]\nmax_downloads_per_peer = 0\n",
                "bank.max_downloads_per_peer",
            ),
            (
                "[bank]\ndownload_buffer_bytes = 0\n",
                "bank.download_buffer_bytes",
            ),
            (
                "[bank]\nmax_upload_sessions = 4\nmax_upload_sessions_per_peer = 5\n",
                "bank.max_upload_sessions_per_peer",
            ),
            (
                "[bank]\nmax_downloads = 2\nmax_downloads_per_peer = 3\n",
                "bank.max_downloads_per_peer",
            ),
        ] {
            let e = Config::parse(text, Path::new("lab.toml")).unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
        let (c, _) = Config::parse("[bank]\npartial_quota_bytes = 1024\n", Path::new("l")).unwrap();
        assert_eq!(c.bank.partial_quota_bytes, 1024);
        assert_eq!(c.bank.max_downloads, limits::DEFAULT_MAX_DOWNLOADS);
    }

    #[test]
    fn bad_seconds_are_refused_naming_the_key() {
        for (text, key) in [
            ("[relay]\nstate_interval = 0\n", "relay.state_interval"),
            ("[broker]\nttl_seconds = nan\n", "broker.ttl_seconds"),
            ("[client]\ntimeout_seconds = inf\n", "client.timeout_seconds"),
            ("[bank]\nheartbeat_seconds = 1e-12\n", "bank.heartbeat_seconds"),
            (
                "[[relay.instruments]]\nid = \"a\"\ndriver = \"mock-psu\"\npoll_interval = 0\n",
                "relay.instruments[0].poll_interval",
            ),
            (
                "[[relay.instruments]]\nid = \"a\"\ndriver = \"mock-psu\"\n\n[[relay.instruments]]\nid = \"b\"\ndriver = \"mock-psu\"\ncall_timeout = -2\n",
                "relay.instruments[1].call_timeout",
            ),
        ] {
            let e = Config::parse(text, Path::new("lab.toml")).unwrap_err().to_string();
            eprintln!("{e}");
            assert!(
                e.contains("lab.toml") && e.contains(key) && e.contains("positive"),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn seconds_is_never_a_zero_duration() {
        for bad in [0.0, -0.0, -1.0, f64::NAN, f64::INFINITY, 1e-12, 1e9] {
            assert!(Seconds::new(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Seconds::new(0.25).unwrap().duration(),
            Duration::from_millis(250)
        );
        assert_eq!(
            Seconds::new(1e-9).unwrap().duration(),
            Duration::from_nanos(1)
        );
        let d = Config::default();
        assert_eq!(d.client.timeout_seconds.get(), 15.0);
        assert!(toml::to_string(&d.broker)
            .unwrap()
            .contains("ttl_seconds = 30.0"));
    }

    #[test]
    fn instruments_lan_table_is_typed_checked_and_not_a_driver_option() {
        let text = r#"
[[relay.instruments]]
id = "psu-1"
driver = "keysight-e36xx"
resource = "ASRL/dev/ttyUSB0::INSTR"
lan = { raw = "0.0.0.0:5025", vxi11 = true, hislip = true }
"#;
        let (c, _) = Config::parse(text, Path::new("x.toml")).unwrap();
        let i = &c.relay.instruments[0];
        let lan = i.lan.as_ref().unwrap();
        assert_eq!(lan.vxi11_addr().as_deref(), Some("0.0.0.0:111"));
        assert_eq!(lan.hislip_addr().as_deref(), Some("0.0.0.0:4880"));
        assert!(!i.driver_options().contains_key("lan"));
        let bad = text.replace("\"0.0.0.0:5025\"", "\"relayhost\"");
        let e = Config::parse(&bad, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("relay.instruments[0].lan"), "{e}");
        let typo = text.replace("hislip = true", "hislop = true");
        assert!(Config::parse(&typo, Path::new("x.toml")).is_err());
    }

    #[test]
    fn gateway_advertise_and_its_bind() {
        let text = "[broker]\nadvertise = \"gateway\"\ngateway_bind = \"tcp://10.1.0.3:*\"\n";
        let (c, w) = Config::parse(text, Path::new("x.toml")).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.broker.advertise, Advertise::Gateway);
        c.validate(Path::new("x.toml")).unwrap();
        assert_eq!(Config::default().broker.advertise, Advertise::Direct);
        let fixed = "[broker]\ngateway_bind = \"tcp://*:6000\"\n";
        let e = Config::parse(fixed, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("broker.gateway_bind") && e.contains("`*`"),
            "{e}"
        );
        assert!(Config::parse("[broker]\nadvertise = \"proxy\"\n", Path::new("x.toml")).is_err());
    }

    #[test]
    fn instruments_table_with_driver_options() {
        let text = r#"
[[relay.instruments]]
id = "psu-1"
driver = "keysight-e36xx"
resource = "TCPIP::127.0.0.1::5025::SOCKET"
poll_interval = 0.5
model = "E36313A"
"#;
        let (c, w) = Config::parse(text, Path::new("x.toml")).unwrap();
        assert!(w.is_empty());
        assert_eq!(c.file.as_deref(), Some(Path::new("x.toml")));
        let i = &c.relay.instruments[0];
        assert_eq!(i.driver, "keysight-e36xx");
        let nested = format!("{text}options = {{ timeout_ms = 500 }}\n");
        let (c2, _) = Config::parse(&nested, Path::new("x.toml")).unwrap();
        let o = c2.relay.instruments[0].driver_options();
        assert_eq!(o.get("timeout_ms").and_then(|v| v.as_i64()), Some(500));
        assert_eq!(o.get("model").and_then(|v| v.as_str()), Some("E36313A"));
        assert_eq!(
            i.options.get("model").and_then(|v| v.as_str()),
            Some("E36313A")
        );
        let streams = format!(
            "{text}streams = [{{ name = \"v\", method = \"measure_voltage\", hz = 10 }}, {{ name = \"i\", method = \"measure_current\", params = {{ channel = 2 }}, hz = 0.5, enabled = false }}]\n"
        );
        let (c3, w) = Config::parse(&streams, Path::new("x.toml")).unwrap();
        assert!(w.is_empty(), "{w:?}");
        let st = &c3.relay.instruments[0].streams;
        assert_eq!(st.len(), 2);
        assert!(st[0].enabled && !st[1].enabled);
        assert_eq!(st[1].params["channel"], 2);
        assert!(!c3.relay.instruments[0]
            .driver_options()
            .contains_key("streams"));
        for (bad, why) in [
            ("streams = [{ name = \"v\", method = \"m\", hz = 0 }]", "hz"),
            ("streams = [{ name = \"a.b\", method = \"m\", hz = 1 }]", "name"),
            ("streams = [{ name = \"v\", method = \"m\", hz = 1 }, { name = \"v\", method = \"m\", hz = 2 }]", "duplicate"),
        ] {
            let e = Config::parse(&format!("{text}{bad}\n"), Path::new("x.toml")).unwrap_err().to_string();
            assert!(e.contains("relay.instruments[0].streams") && e.contains(why), "{bad}: {e}");
        }
        let dup = format!("{text}\n[[relay.instruments]]\nid = \"psu-1\"\ndriver = \"mock-psu\"\n");
        assert!(Config::parse(&dup, Path::new("x.toml"))
            .unwrap_err()
            .to_string()
            .contains("duplicate"));
    }
}
