//! clap value parsers for the CLI's flags, with the same rules as the
//! configuration file (they call the `labmesh-config` and `labmesh-proto`
//! checks, never a copy of them). A value out of range is a usage error:
//! clap prints the flag, the value and the rule, and the command exits 2
//! before anything binds or connects.

use labmesh_config::{check_endpoint, check_interval, Seconds};

/// A number of seconds usable as a deadline (`--timeout`): finite,
/// positive, at least 1 ns and below 10^9 s ([`Seconds`]).
pub fn seconds(s: &str) -> Result<Seconds, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Seconds::new(v).map_err(|e| e.to_string())
}

/// A period between state messages (`--state-interval`): [`seconds`] and at
/// least [`labmesh_config::MIN_STATE_INTERVAL`].
pub fn interval(s: &str) -> Result<Seconds, String> {
    let v = seconds(s)?;
    check_interval(v)?;
    Ok(v)
}

/// A ZeroMQ endpoint (`--rpc`, `--rpc-bind`, `--ingest-bind`, ...): the
/// file's endpoint rule ([`check_endpoint`]: tcp port 0..=65535 or `*`).
pub fn endpoint(s: &str) -> Result<String, String> {
    check_endpoint(s)?;
    Ok(s.to_string())
}

/// A relay or bank id: 1..=128 of letters, digits, `.`, `_`, `-`
/// ([`labmesh_proto::mesh::valid_node_id`], what the broker accepts).
pub fn node_id(s: &str) -> Result<String, String> {
    if labmesh_proto::mesh::valid_node_id(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a node id: 1..={} of letters, digits, '.', '_', '-'",
            labmesh_proto::limits::MAX_NODE_ID
        ))
    }
}

/// A finite number above zero (`sim psu --load-ohms`).
pub fn positive(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a finite number above 0")),
    }
}

/// A rate in Hz for state messages (`bench soak --hz`): above 0 and at
/// most 1 / [`labmesh_config::MIN_STATE_INTERVAL`].
pub fn rate(s: &str) -> Result<f64, String> {
    let max = 1.0 / labmesh_config::MIN_STATE_INTERVAL;
    match positive(s) {
        Ok(v) if v <= max + 1e-9 => Ok(v),
        _ => Err(format!("{s:?} is not a rate in 0 < Hz <= {max}")),
    }
}

/// `KEY=VALUE` with a non-empty key (`--meta`, `--option`); kept as typed,
/// split later.
pub fn key_value(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.trim().is_empty() => Ok(s.to_string()),
        Some(_) => Err(format!("{s:?}: the key before '=' is empty")),
        None => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// A JSON value (`call --json`).
pub fn json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not valid JSON: {e}"))
}

/// A dataset's SHA-256 (64 hex digits), normalised to lower case as the
/// banks write it.
#[allow(dead_code)]
pub fn sha256(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t.to_ascii_lowercase())
    } else {
        Err(format!("{s:?} is not a SHA-256 (64 hex digits)"))
    }
}

/// `--broker`: a host (`10.0.0.2`, put in place of `BROKER` in every
/// endpoint of the file) or the broker's full directory endpoint
/// (`tcp://10.0.0.2:5750`: its host as above, and the directory endpoint
/// itself for every node and client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerArg {
    /// The host.
    pub host: String,
    /// The directory endpoint, when a full one was given.
    pub endpoint: Option<String>,
}

/// Parse `--broker`.
pub fn broker(s: &str) -> Result<BrokerArg, String> {
    if s.contains("://") {
        check_endpoint(s)?;
        let rest = s
            .strip_prefix("tcp://")
            .ok_or_else(|| format!("{s:?}: the broker is reached over tcp://host:port"))?;
        let host = rest
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(rest)
            .to_string();
        if s.ends_with(":*") || host == "*" {
            return Err(format!(
                "{s:?}: a broker to connect to needs a host and a port"
            ));
        }
        return Ok(BrokerArg {
            host,
            endpoint: Some(s.to_string()),
        });
    }
    let host = s.trim();
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(format!("{s:?} is not a host or a tcp://host:port endpoint"));
    }
    // `host:port` without the scheme: the endpoint it means.
    if let Some((h, p)) = host.rsplit_once(':') {
        if !h.contains(':') && p.parse::<u16>().is_ok() {
            return broker(&format!("tcp://{host}"));
        }
    }
    Ok(BrokerArg {
        host: host.to_string(),
        endpoint: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_refuse_what_the_file_refuses() {
        for bad in ["0", "-1", "nan", "inf", "1e20", "1e-10", "x", ""] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
        assert_eq!(seconds("2.5").map(Seconds::get), Ok(2.5));
        assert!(interval("1e-9").is_err());
        assert!(interval("0.001").is_err());
        assert!(interval("0.01").is_ok());
    }

    #[test]
    fn endpoints_ids_and_pairs() {
        assert!(endpoint("tcp://127.0.0.1:99999").is_err());
        assert!(endpoint("tcp://*:*").is_ok());
        assert!(node_id("").is_err());
        assert!(node_id("psu 1").is_err());
        assert!(node_id("psu-1").is_ok());
        assert!(positive("0").is_err());
        assert!(positive("nan").is_err());
        assert!(positive("-3").is_err());
        assert_eq!(positive("2.5"), Ok(2.5));
        assert!(key_value("=x").is_err());
        assert!(key_value("x").is_err());
        assert!(key_value("a=").is_ok());
        assert_eq!(sha256(&"AB".repeat(32)), Ok("ab".repeat(32)));
        assert!(sha256("abc").is_err());
    }

    #[test]
    fn broker_is_a_host_or_an_endpoint() {
        assert_eq!(
            broker("10.0.0.2"),
            Ok(BrokerArg {
                host: "10.0.0.2".into(),
                endpoint: None
            })
        );
        let full = BrokerArg {
            host: "10.0.0.2".into(),
            endpoint: Some("tcp://10.0.0.2:6000".into()),
        };
        assert_eq!(broker("tcp://10.0.0.2:6000"), Ok(full.clone()));
        assert_eq!(broker("10.0.0.2:6000"), Ok(full));
        assert!(broker("tcp://10.0.0.2:99999").is_err());
        assert!(broker("tcp://*:*").is_err());
        assert!(broker("").is_err());
        assert!(broker("ipc:///tmp/x").is_err());
    }
}
