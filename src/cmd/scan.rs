//! `labmesh scan`: what is plugged in. Lists serial ports (with the USB
//! identity the OS knows) and USBTMC devices; with `--probe` asks each
//! for `*IDN?` (serial ports at common baud rates) and prints ready
//! `[[relay.instruments]]` blocks; `--tcp` probes LAN addresses over
//! HiSLIP, VXI-11 and a raw socket.

use std::process::ExitCode;
use std::time::Duration;

use labmesh_drivers::discover::{self, Found};
use labmesh_drivers::usbtmc;
use labmesh_drivers::Resource;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Ask every port and device for `*IDN?` and print a ready
    /// `[[relay.instruments]]` block for each that answers.
    #[arg(long)]
    probe: bool,
    /// A serial port to include (pseudo-terminals and ports the OS does
    /// not list); repeatable.
    #[arg(long, value_name = "PATH")]
    port: Vec<String>,
    /// Baud rates to try on serial ports, in order (repeatable; default
    /// 9600, 115200, 19200, 38400, 57600).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(50..=4_000_000))]
    baud: Vec<u32>,
    /// A LAN instrument to probe: HOST (HiSLIP on 4880, VXI-11 through the
    /// portmapper on 111, raw socket on 5025), HOST:PORT (each of the three
    /// at PORT) or a resource string; repeatable. Always probed.
    #[arg(long, value_name = "HOST[:PORT]")]
    tcp: Vec<String>,
    /// Time allowed for each attempt (connect, then the answer), in
    /// milliseconds: 50..=10000.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..=10_000))]
    timeout_ms: u64,
    /// Only probe the given --port and --tcp targets; skip listing the
    /// machine's serial ports and USB devices.
    #[arg(long)]
    only: bool,
}

pub async fn exec(a: Args) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_millis(a.timeout_ms);
    let bauds: Vec<u32> = if a.baud.is_empty() {
        discover::COMMON_BAUDS.to_vec()
    } else {
        a.baud.clone()
    };
    // Check every --tcp target before anything is probed.
    let mut lan = Vec::new();
    for t in &a.tcp {
        lan.push((t.clone(), discover::lan_targets(t)?));
    }

    let mut serial: Vec<String> = Vec::new();
    let mut usb: Vec<usbtmc::UsbtmcDeviceInfo> = Vec::new();
    if !a.only {
        println!("Serial ports:");
        match discover::serial_ports() {
            Ok(ports) if ports.is_empty() && a.port.is_empty() => println!("  (none listed)"),
            Ok(ports) => {
                for p in ports {
                    println!("  {}", describe_port(&p));
                    serial.push(p.path);
                }
            }
            Err(labmesh_drivers::DriverError::Link { source, .. }) => {
                println!("  cannot list serial ports: {source}")
            }
            Err(e) => println!("  cannot list serial ports: {e}"),
        }
    }
    for p in &a.port {
        if !serial.contains(p) {
            if !a.only {
                println!("  {p}  (given)");
            }
            serial.push(p.clone());
        }
    }
    if !a.only {
        println!("USBTMC devices:");
        match usbtmc::list_devices().await {
            Ok(devs) if devs.is_empty() => println!("  (none)"),
            Ok(devs) => {
                for d in devs {
                    println!(
                        "  {}  {} {}{}",
                        d.resource(),
                        d.manufacturer.as_deref().unwrap_or("?"),
                        d.product.as_deref().unwrap_or("?"),
                        if d.usb488 { " (USB488)" } else { "" }
                    );
                    usb.push(d);
                }
            }
            Err(labmesh_drivers::DriverError::Link { source, .. }) => {
                println!("  cannot list USB devices: {source}")
            }
            Err(e) => println!("  cannot list USB devices: {e}"),
        }
    }

    let mut found: Vec<Found> = Vec::new();
    if a.probe || !lan.is_empty() {
        println!("Probes (*IDN?, {} ms per attempt):", a.timeout_ms);
    }
    if a.probe {
        for path in &serial {
            match discover::probe_serial(path, &bauds, timeout).await {
                Some(f) => {
                    println!("  {path}: {} -> {}", f.idn, f.driver);
                    found.push(f);
                }
                None => println!("  {path}: no answer at {}", join(&bauds)),
            }
        }
        for d in &usb {
            let r = match Resource::parse(&d.resource()) {
                Ok(r) => r,
                Err(e) => {
                    println!("  {}: {e}", d.resource());
                    continue;
                }
            };
            match discover::probe(&r, timeout).await {
                Some(mut f) => {
                    // The VISA form reads better in a config file.
                    f.resource = d.resource();
                    println!("  {}: {} -> {}", f.resource, f.idn, f.driver);
                    found.push(f);
                }
                None => println!("  {}: no answer", d.resource()),
            }
        }
    }
    for (text, candidates) in &lan {
        match discover::probe_first(candidates, timeout).await {
            Some(f) => {
                println!("  {text}: {} -> {} over {}", f.idn, f.driver, f.resource);
                found.push(f);
            }
            None => {
                let tried: Vec<String> = candidates.iter().map(|r| r.to_string()).collect();
                println!("  {text}: no answer (tried {})", tried.join(", "));
            }
        }
    }

    if !found.is_empty() {
        println!();
        println!("# Paste into labmesh.toml:");
        let mut seen: Vec<String> = Vec::new();
        for f in &found {
            let mut n = 1;
            let mut id = discover::suggested_id(&f.idn, n);
            while seen.contains(&id) {
                n += 1;
                id = discover::suggested_id(&f.idn, n);
            }
            seen.push(id.clone());
            println!();
            print!("{}", discover::instrument_block(&id, f));
        }
    } else if a.probe || !lan.is_empty() {
        println!("Nothing answered *IDN?.");
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_port(p: &discover::SerialPortEntry) -> String {
    let mut s = format!("{}  {}", p.path, p.kind);
    if let (Some(v), Some(pid)) = (p.vid, p.pid) {
        s.push_str(&format!(" {v:04x}:{pid:04x}"));
    }
    if let Some(sn) = &p.serial {
        s.push_str(&format!(" serial={sn}"));
    }
    for t in [&p.manufacturer, &p.product].into_iter().flatten() {
        s.push(' ');
        s.push_str(t);
    }
    s
}

fn join(bauds: &[u32]) -> String {
    bauds
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join("/")
        + " baud"
}
