//! labmesh-config: the labmesh TOML file, read as the Python package writes
//! it (`[broker]`, `[relay]`, `[bank]`, `[client]` with the same keys), plus
//! extension tables (`[[relay.instruments]]`).
//!
//! Unknown keys are reported as [`Warning`]s naming the file and the key;
//! invalid values are [`ConfigError`]s naming the file, the key and why.
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use labmesh_wire::endpoint::{public_endpoint, resolve_broker};

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
    pub ttl_seconds: f64,
    /// The broker's host, substituted for `BROKER` in endpoints.
    pub address: String,
    /// Extension: high-water mark of the bus sockets (labmesh uses 4000).
    pub hwm: i32,
}

impl Default for BrokerSection {
    fn default() -> Self {
        BrokerSection {
            rpc_bind: "tcp://*:5750".into(),
            xsub_bind: "tcp://*:5751".into(),
            xpub_bind: "tcp://*:5752".into(),
            ttl_seconds: 30.0,
            address: "127.0.0.1".into(),
            hwm: 4000,
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
    pub poll_interval: Option<f64>,
    /// RPC bind for this instrument (default: `[relay] default_rpc_bind`
    /// for the first instrument, an ephemeral port for the others).
    #[serde(default)]
    pub rpc_bind: Option<String>,
    /// Seconds one call may take before it fails with 408 (default 10).
    #[serde(default)]
    pub call_timeout: Option<f64>,
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
    pub state_interval: f64,
    /// Broker directory endpoint (may contain `BROKER`).
    pub broker_rpc: String,
    /// Broker XSUB endpoint (may contain `BROKER`).
    pub broker_xsub: String,
    /// Seconds between heartbeats.
    pub heartbeat_seconds: f64,
    /// Seconds to wait for a bank's answer during an upload.
    pub upload_timeout: f64,
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
            state_interval: 1.0,
            broker_rpc: "tcp://BROKER:5750".into(),
            broker_xsub: "tcp://BROKER:5751".into(),
            heartbeat_seconds: 5.0,
            upload_timeout: 10.0,
            upload_retries: 5,
            upload_chunk: 1_000_000,
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
    pub heartbeat_seconds: f64,
    /// Host put in place of `*` when advertising.
    pub default_address: String,
}

impl Default for BankSection {
    fn default() -> Self {
        BankSection {
            ingest_bind: "tcp://*:5761".into(),
            retrieve_bind: "tcp://*:5762".into(),
            default_data_dir: PathBuf::from("./bank_data"),
            broker_rpc: "tcp://BROKER:5750".into(),
            broker_xsub: "tcp://BROKER:5751".into(),
            heartbeat_seconds: 5.0,
            default_address: "127.0.0.1".into(),
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
    /// (default 15: longer than a relay's default 10 s call deadline, so
    /// the relay's 408 arrives before the client stops waiting).
    pub timeout_seconds: f64,
}

impl Default for ClientSection {
    fn default() -> Self {
        ClientSection {
            broker_rpc: "tcp://BROKER:5750".into(),
            broker_xpub: "tcp://BROKER:5752".into(),
            default_address: "127.0.0.1".into(),
            timeout_seconds: 15.0,
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
    /// The file this configuration was read from (set by [`Config::load`]
    /// and [`Config::parse`]; `None` for the built-in defaults), for
    /// messages about its values that other crates check.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// Seconds as a `Duration`, for validated (finite, positive) values.
pub fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
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
        .map_err(|e| ConfigError::Parse {
            file: file.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
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
        let positive = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v < 1.0e9 {
                Ok(())
            } else {
                Err(bad(
                    key,
                    format!("must be a positive number of seconds, got {v}"),
                ))
            }
        };
        let endpoint = |key: &str, v: &str| {
            let ok = ["tcp://", "ipc://", "inproc://"]
                .iter()
                .any(|p| v.starts_with(p) && v.len() > p.len());
            if ok {
                Ok(())
            } else {
                Err(bad(
                    key,
                    format!("{v:?} is not a ZeroMQ endpoint (tcp://host:port, ipc://path)"),
                ))
            }
        };
        endpoint("broker.rpc_bind", &self.broker.rpc_bind)?;
        endpoint("broker.xsub_bind", &self.broker.xsub_bind)?;
        endpoint("broker.xpub_bind", &self.broker.xpub_bind)?;
        positive("broker.ttl_seconds", self.broker.ttl_seconds)?;
        if self.broker.hwm < 0 {
            return Err(bad("broker.hwm", "must be 0 (unlimited) or more".into()));
        }
        if self.broker.address.is_empty() {
            return Err(bad("broker.address", "must not be empty".into()));
        }
        endpoint("relay.default_rpc_bind", &self.relay.default_rpc_bind)?;
        endpoint("relay.broker_rpc", &self.relay.broker_rpc)?;
        endpoint("relay.broker_xsub", &self.relay.broker_xsub)?;
        positive("relay.state_interval", self.relay.state_interval)?;
        positive("relay.heartbeat_seconds", self.relay.heartbeat_seconds)?;
        positive("relay.upload_timeout", self.relay.upload_timeout)?;
        if self.relay.upload_chunk == 0 || self.relay.upload_chunk > 64 * 1024 * 1024 {
            return Err(bad(
                "relay.upload_chunk",
                format!(
                    "must be 1..=67108864 bytes, got {}",
                    self.relay.upload_chunk
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, inst) in self.relay.instruments.iter().enumerate() {
            let key = |k: &str| format!("relay.instruments[{i}].{k}");
            if inst.id.is_empty() {
                return Err(bad(&key("id"), "must not be empty".into()));
            }
            if !seen.insert(inst.id.as_str()) {
                return Err(bad(
                    &key("id"),
                    format!("duplicate instrument id {:?}", inst.id),
                ));
            }
            if let Some(p) = inst.poll_interval {
                positive(&key("poll_interval"), p)?;
            }
            if let Some(p) = inst.call_timeout {
                positive(&key("call_timeout"), p)?;
            }
            if let Some(b) = &inst.rpc_bind {
                endpoint(&key("rpc_bind"), b)?;
            }
        }
        endpoint("bank.ingest_bind", &self.bank.ingest_bind)?;
        endpoint("bank.retrieve_bind", &self.bank.retrieve_bind)?;
        endpoint("bank.broker_rpc", &self.bank.broker_rpc)?;
        endpoint("bank.broker_xsub", &self.bank.broker_xsub)?;
        positive("bank.heartbeat_seconds", self.bank.heartbeat_seconds)?;
        endpoint("client.broker_rpc", &self.client.broker_rpc)?;
        endpoint("client.broker_xpub", &self.client.broker_xpub)?;
        positive("client.timeout_seconds", self.client.timeout_seconds)?;
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
        let dup = format!("{text}\n[[relay.instruments]]\nid = \"psu-1\"\ndriver = \"mock-psu\"\n");
        assert!(Config::parse(&dup, Path::new("x.toml"))
            .unwrap_err()
            .to_string()
            .contains("duplicate"));
    }
}
