//! Finding instruments (what `labmesh scan` does): serial ports with the
//! USB identity the OS knows, USBTMC devices, and `*IDN?` probes over
//! serial (at several baud rates), raw TCP sockets, VXI-11 and HiSLIP.
//! Every probe is bounded in time; a probe never writes anything but
//! `*IDN?` (and a link's own handshake).

use std::time::Duration;

use crate::psu::models::{PsuModel, MODELS};
use crate::resource::{Resource, SerialSettings};
use crate::scpi::{ScpiSession, SessionOptions};
use crate::DriverError;

/// A serial port the OS lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialPortEntry {
    /// Device path (`/dev/ttyUSB0`).
    pub path: String,
    /// `usb`, `pci`, `bluetooth` or `unknown`.
    pub kind: String,
    /// USB idVendor, when a USB adapter.
    pub vid: Option<u16>,
    /// USB idProduct.
    pub pid: Option<u16>,
    /// USB serial number string.
    pub serial: Option<String>,
    /// USB manufacturer string.
    pub manufacturer: Option<String>,
    /// USB product string.
    pub product: Option<String>,
}

/// The serial ports the OS lists (`serialport::available_ports`).
pub fn serial_ports() -> Result<Vec<SerialPortEntry>, DriverError> {
    let ports = serialport::available_ports()
        .map_err(|e| DriverError::link("listing serial ports", std::io::Error::from(e)))?;
    Ok(ports
        .into_iter()
        .map(|p| {
            let mut e = SerialPortEntry {
                path: p.port_name,
                kind: "unknown".into(),
                vid: None,
                pid: None,
                serial: None,
                manufacturer: None,
                product: None,
            };
            match p.port_type {
                serialport::SerialPortType::UsbPort(u) => {
                    e.kind = "usb".into();
                    e.vid = Some(u.vid);
                    e.pid = Some(u.pid);
                    e.serial = u.serial_number;
                    e.manufacturer = u.manufacturer;
                    e.product = u.product;
                }
                serialport::SerialPortType::PciPort => e.kind = "pci".into(),
                serialport::SerialPortType::BluetoothPort => e.kind = "bluetooth".into(),
                serialport::SerialPortType::Unknown => {}
            }
            e
        })
        .collect())
}

/// Baud rates tried by [`probe_serial`] unless told otherwise: the usual
/// bench-instrument defaults first.
pub const COMMON_BAUDS: &[u32] = &[9600, 115200, 19200, 38400, 57600];

/// What answered a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The resource that answered (URL form, with serial settings).
    pub resource: String,
    /// Its `*IDN?` answer.
    pub idn: String,
    /// The driver that fits the answer (`scpi` when none is more specific).
    pub driver: String,
    /// The model, when a built-in driver knows it (option `model`).
    pub model: Option<String>,
}

/// The built-in model an `*IDN?` answer names (its second field).
pub fn model_for_idn(idn: &str) -> Option<&'static PsuModel> {
    let model = idn.split(',').nth(1)?.trim();
    MODELS.iter().find(|m| m.model.eq_ignore_ascii_case(model))
}

/// The driver that fits an `*IDN?` answer: a family driver when the model
/// is one the built-in drivers know, else `scpi`.
pub fn driver_for_idn(idn: &str) -> &'static str {
    model_for_idn(idn)
        .map(|m| m.family.driver_name())
        .unwrap_or("scpi")
}

fn found(resource: &Resource, idn: String) -> Found {
    let model = model_for_idn(&idn);
    Found {
        resource: resource.to_string(),
        driver: driver_for_idn(&idn).to_string(),
        model: model.map(|m| m.model.to_string()),
        idn,
    }
}

/// Ask `resource` for `*IDN?` within `timeout` (connect and answer each).
/// `Ok(None)`: it did not answer like an instrument.
pub async fn probe(resource: &Resource, timeout: Duration) -> Option<Found> {
    let opts = SessionOptions {
        timeout,
        connect_timeout: timeout,
        drain_quiet: Duration::from_millis(30),
        ..SessionOptions::default()
    };
    let mut s = ScpiSession::new(resource.clone(), opts);
    // Overall bound: connect + one exchange (+ a resync), whatever the link.
    let r = tokio::time::timeout(timeout * 3, s.idn()).await;
    s.close().await;
    match r {
        Ok(Ok(idn)) if looks_like_idn(&idn) => Some(found(resource, idn)),
        Ok(Ok(other)) => {
            tracing::debug!(%resource, reply = %other, "not an *IDN? answer");
            None
        }
        Ok(Err(e)) => {
            tracing::debug!(%resource, "no answer: {e}");
            None
        }
        Err(_) => None,
    }
}

/// An `*IDN?` answer has four comma-separated fields of printable text.
fn looks_like_idn(s: &str) -> bool {
    s.split(',').count() >= 3
        && s.len() < 512
        && s.chars().all(|c| !c.is_control())
        && s.split(',').next().is_some_and(|m| !m.trim().is_empty())
}

/// Probe a serial port at each of `bauds` in turn (8N1, no flow control);
/// the first rate that gets an `*IDN?` answer wins.
pub async fn probe_serial(path: &str, bauds: &[u32], timeout: Duration) -> Option<Found> {
    for &baud in bauds {
        let settings = SerialSettings {
            baud,
            ..SerialSettings::default()
        };
        let r = Resource::Serial {
            path: path.to_string(),
            settings,
        };
        if let Some(f) = probe(&r, timeout).await {
            return Some(f);
        }
    }
    None
}

/// The resources worth trying at a LAN address: HiSLIP, VXI-11 and a raw
/// socket, on their standard ports (4880, portmapper 111, 5025) or all at
/// the given `port`.
pub fn lan_candidates(host: &str, port: Option<u16>) -> Vec<Resource> {
    vec![
        Resource::Hislip {
            host: host.to_string(),
            device: "hislip0".into(),
            port: port.unwrap_or(crate::hislip::PORT),
            mode: crate::hislip::HislipMode::default(),
        },
        Resource::Vxi11 {
            host: host.to_string(),
            device: "inst0".into(),
            portmapper_port: port.unwrap_or(crate::vxi11::PMAP_PORT),
            core_port: None,
        },
        Resource::Tcp {
            host: host.to_string(),
            port: port.unwrap_or(5025),
        },
    ]
}

/// Parse `HOST`, `HOST:PORT`, `[V6]:PORT` or a resource string into what
/// to try: a resource string is tried as it is; an address, every LAN
/// link ([`lan_candidates`]).
pub fn lan_targets(text: &str) -> Result<Vec<Resource>, DriverError> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let visa = ["tcpip", "asrl", "gpib", "usb"]
        .iter()
        .any(|k| lower.starts_with(k))
        && t.contains("::");
    if t.contains("://") || visa {
        return Ok(vec![Resource::parse(t)?]);
    }
    let bad = || DriverError::Config(format!("--tcp {t:?}: expected HOST[:PORT] or a resource"));
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let (h, p) = rest.split_once(']').ok_or_else(bad)?;
        let port = match p.strip_prefix(':') {
            Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?),
            None if p.is_empty() => None,
            None => return Err(bad()),
        };
        (h.to_string(), port)
    } else {
        match t.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (
                h.to_string(),
                Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?),
            ),
            Some(_) => (t.to_string(), None), // a bare IPv6 address
            None => (t.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(lan_candidates(&host, port))
}

/// Probe `candidates` in order; the first that answers wins.
pub async fn probe_first(candidates: &[Resource], timeout: Duration) -> Option<Found> {
    for r in candidates {
        if let Some(f) = probe(r, timeout).await {
            return Some(f);
        }
    }
    None
}

/// A ready `[[relay.instruments]]` TOML block for `f`, with id `id`.
pub fn instrument_block(id: &str, f: &Found) -> String {
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut out = String::new();
    out.push_str(&format!("# *IDN? {}\n", f.idn.replace('\n', " ")));
    out.push_str("[[relay.instruments]]\n");
    out.push_str(&format!("id = {}\n", q(id)));
    out.push_str(&format!("driver = {}\n", q(&f.driver)));
    out.push_str(&format!("resource = {}\n", q(&f.resource)));
    if let Some(m) = &f.model {
        out.push_str(&format!("options = {{ model = {} }}\n", q(m)));
    }
    out
}

/// An instrument id from an `*IDN?` answer: the model, lower-case, with
/// `-N` appended (`e36313a-1`).
pub fn suggested_id(idn: &str, n: usize) -> String {
    let model = idn.split(',').nth(1).unwrap_or("instrument").trim();
    let mut id: String = model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    id = id.trim_matches('-').to_string();
    if id.is_empty() {
        id = "instrument".into();
    }
    format!("{id}-{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_from_idn() {
        assert_eq!(
            driver_for_idn("Keysight Technologies,E36313A,MY1,1.0"),
            "keysight-e36xx"
        );
        assert_eq!(
            driver_for_idn("RIGOL TECHNOLOGIES,DP832,DP8C1,00.01"),
            "rigol-dp8xx"
        );
        assert_eq!(
            driver_for_idn("Siglent,SPD3303X-E,SPD1,1.0"),
            "siglent-spd3303x"
        );
        assert_eq!(driver_for_idn("Acme,DMM9000,1,1"), "scpi");
        assert_eq!(driver_for_idn("garbage"), "scpi");
        assert_eq!(suggested_id("RIGOL,DP832,x,y", 2), "dp832-2");
        assert_eq!(suggested_id("Siglent,SPD3303X-E,x,y", 1), "spd3303x-e-1");
        assert_eq!(suggested_id("", 1), "instrument-1");
    }

    #[test]
    fn idn_shape() {
        assert!(looks_like_idn("A,B,C,D"));
        assert!(!looks_like_idn("1"));
        assert!(!looks_like_idn(",B,C,D"));
        assert!(!looks_like_idn("A,B\u{1},C"));
    }

    #[test]
    fn lan_targets_parse() {
        let t = lan_targets("10.0.0.5").unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[2].to_string(), "tcp://10.0.0.5:5025");
        assert_eq!(t[0].to_string(), "hislip://10.0.0.5:4880/hislip0");
        assert_eq!(t[1].to_string(), "vxi11://10.0.0.5:111/inst0");
        let t = lan_targets("host:7000").unwrap();
        assert_eq!(t[2].to_string(), "tcp://host:7000");
        let t = lan_targets("[::1]:7000").unwrap();
        assert_eq!(t[2].to_string(), "tcp://[::1]:7000");
        let t = lan_targets("TCPIP::host::5025::SOCKET").unwrap();
        assert_eq!(t, vec![Resource::parse("tcp://host:5025").unwrap()]);
        assert!(lan_targets("host:0").is_err());
        assert!(lan_targets(":5025").is_err());
    }

    #[test]
    fn blocks_are_valid_toml() {
        let f = Found {
            resource: "serial:///dev/ttyUSB0?baud=9600".into(),
            idn: "Keysight Technologies,E36313A,\"x\",1".into(),
            driver: "keysight-e36xx".into(),
            model: Some("E36313A".into()),
        };
        let b = instrument_block("e36313a-1", &f);
        let v: toml::Value = toml::from_str(&b).unwrap();
        let inst = &v["relay"]["instruments"][0];
        assert_eq!(inst["driver"].as_str(), Some("keysight-e36xx"));
        assert_eq!(
            inst["resource"].as_str(),
            Some("serial:///dev/ttyUSB0?baud=9600")
        );
        assert_eq!(inst["options"]["model"].as_str(), Some("E36313A"));
    }
}
