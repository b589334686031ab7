//! `lan = { ... }` in a `[[relay.instruments]]` table: the relay exposes
//! the instrument as a LAN instrument (its LAN-instrument gateway).

use serde::{Deserialize, Serialize};

/// Where one LAN server listens: `true` for its usual address on every
/// interface, or `"HOST:PORT"` (`"127.0.0.1:0"`: a free port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Listen {
    /// `true`: the protocol's usual port on `0.0.0.0`; `false`: off.
    Default(bool),
    /// An address.
    At(String),
}

impl Listen {
    /// The address to bind, with `default_port` for `true`; `None` for `false`.
    pub fn address(&self, default_port: u16) -> Option<String> {
        match self {
            Listen::Default(false) => None,
            Listen::Default(true) => Some(format!("0.0.0.0:{default_port}")),
            Listen::At(a) => Some(a.clone()),
        }
    }
}

/// The LAN servers of one instrument (all optional; none: no gateway).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanSection {
    /// Raw SCPI socket (`true`: `0.0.0.0:5025`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Listen>,
    /// VXI-11 portmapper (`true`: `0.0.0.0:111`, which needs root or
    /// `CAP_NET_BIND_SERVICE`); the core channel goes on `vxi11_core`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxi11: Option<Listen>,
    /// VXI-11 core channel (default: a free port on the portmapper's
    /// host). Alone, without `vxi11`, it serves VXI-11 without a
    /// portmapper (PyVISA: `TCPIP::HOST,PORT::INSTR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxi11_core: Option<String>,
    /// HiSLIP (`true`: `0.0.0.0:4880`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hislip: Option<Listen>,
}

/// Usual ports.
pub mod ports {
    /// Raw SCPI socket.
    pub const RAW: u16 = 5025;
    /// ONC RPC portmapper (VXI-11).
    pub const PORTMAPPER: u16 = 111;
    /// HiSLIP.
    pub const HISLIP: u16 = 4880;
}

impl LanSection {
    /// Whether any server is on.
    pub fn any(&self) -> bool {
        self.raw_addr().is_some()
            || self.vxi11_addr().is_some()
            || self.vxi11_core.is_some()
            || self.hislip_addr().is_some()
    }

    /// The raw socket's address, if on.
    pub fn raw_addr(&self) -> Option<String> {
        self.raw.as_ref().and_then(|l| l.address(ports::RAW))
    }

    /// The portmapper's address, if on.
    pub fn vxi11_addr(&self) -> Option<String> {
        self.vxi11
            .as_ref()
            .and_then(|l| l.address(ports::PORTMAPPER))
    }

    /// The HiSLIP server's address, if on.
    pub fn hislip_addr(&self) -> Option<String> {
        self.hislip.as_ref().and_then(|l| l.address(ports::HISLIP))
    }

    /// Why the addresses are refused, if they are.
    pub fn check(&self) -> Result<(), String> {
        let addrs = [
            ("raw", self.raw_addr()),
            ("vxi11", self.vxi11_addr()),
            ("vxi11_core", self.vxi11_core.clone()),
            ("hislip", self.hislip_addr()),
        ];
        for (key, addr) in addrs {
            if let Some(a) = addr {
                if a.parse::<std::net::SocketAddr>().is_err() {
                    return Err(format!(
                        "{key}: {a:?} is not HOST:PORT with a numeric host (e.g. \"0.0.0.0:5025\", \"127.0.0.1:0\")"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_means_the_usual_port_and_addresses_are_checked() {
        let l: LanSection =
            toml::from_str("raw = true\nhislip = \"127.0.0.1:0\"\nvxi11 = false\n").unwrap();
        assert_eq!(l.raw_addr().as_deref(), Some("0.0.0.0:5025"));
        assert_eq!(l.hislip_addr().as_deref(), Some("127.0.0.1:0"));
        assert_eq!(l.vxi11_addr(), None);
        assert!(l.any() && l.check().is_ok());
        let bad: LanSection = toml::from_str("raw = \"somehost\"\n").unwrap();
        assert!(bad.check().unwrap_err().contains("raw"));
        assert!(toml::from_str::<LanSection>("hislop = true\n").is_err());
        assert!(!LanSection::default().any());
    }
}
