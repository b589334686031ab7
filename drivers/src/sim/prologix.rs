//! The simulator as a Prologix-compatible GPIB adapter (the `++` command
//! set of the Prologix GPIB-USB / GPIB-ETHERNET manual, as AR488 also
//! accepts it) with simulated instruments on its bus.
//!
//! Host input is lines ending in an unescaped LF or CR; ESC makes the next
//! byte literal. A line starting with an unescaped `++` is an adapter
//! command; any other line is data for the addressed instrument, followed
//! by the `++eos` terminator (0: CR LF, 1: CR, 2: LF, 3: none) and EOI. An
//! instrument runs a message at each LF and at EOI; its answers wait in its
//! output queue until `++read` (or at once with `++auto 1`). A muted
//! instrument's messages wait, and `++read` sends nothing after
//! `++read_tmo_ms`. Each connection is one adapter (its own settings and
//! bus buffers); the instruments are shared.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{SimPsu, MAX_LINE};

/// Instruments on a simulated GPIB bus, by primary address.
#[derive(Debug, Clone, Default)]
pub struct GpibBus {
    instruments: Arc<HashMap<u8, SimPsu>>,
}

impl GpibBus {
    /// A bus with these instruments.
    pub fn new(instruments: impl IntoIterator<Item = (u8, SimPsu)>) -> Self {
        GpibBus {
            instruments: Arc::new(instruments.into_iter().collect()),
        }
    }

    /// Serve Prologix adapters over TCP (port 1234 on a GPIB-ETHERNET)
    /// until `shutdown`; open connections are closed and awaited.
    pub async fn serve_tcp(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let mut shutdown = pin!(shutdown);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = listener.accept() => {
                    let sock = match accepted {
                        Ok((s, _)) => s,
                        Err(e) => {
                            tracing::warn!("sim accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = sock.set_nodelay(true);
                    let bus = self.clone();
                    let mut stop = stop_rx.clone();
                    conns.spawn(async move {
                        let stopped = async move {
                            let _ = stop.wait_for(|s| *s).await;
                        };
                        if let Err(e) = bus.serve_stream(sock, stopped).await {
                            tracing::debug!("sim prologix client: {e}");
                        }
                    });
                }
            }
        }
        let _ = stop_tx.send(true);
        while conns.join_next().await.is_some() {}
        Ok(())
    }

    /// Serve one adapter on a byte stream until it closes or `shutdown`.
    pub async fn serve_stream<S>(
        &self,
        mut stream: S,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut shutdown = pin!(shutdown);
        let mut a = AdapterState::default();
        let mut line: Vec<u8> = Vec::new();
        let mut escape_next = false;
        let mut literal_prefix = false; // an escaped byte among the first two
        let mut chunk = [0u8; 4096];
        loop {
            let n = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                n = stream.read(&mut chunk) => n?,
            };
            if n == 0 {
                return Ok(());
            }
            for &b in chunk.get(..n).unwrap_or_default() {
                if escape_next {
                    escape_next = false;
                    if line.len() < 2 {
                        literal_prefix = true;
                    }
                    line.push(b);
                } else if b == 0x1B {
                    escape_next = true;
                } else if b == b'\n' || b == b'\r' {
                    let done = std::mem::take(&mut line);
                    let is_cmd = !literal_prefix && done.starts_with(b"++");
                    literal_prefix = false;
                    if done.is_empty() && !is_cmd {
                        continue;
                    }
                    let out = tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        out = self.handle(&mut a, &done, is_cmd) => out,
                    };
                    if !out.is_empty() {
                        stream.write_all(&out).await?;
                        stream.flush().await?;
                    }
                } else if line.len() > MAX_LINE {
                    line.clear();
                } else {
                    line.push(b);
                }
            }
        }
    }

    async fn handle(&self, a: &mut AdapterState, line: &[u8], is_cmd: bool) -> Vec<u8> {
        if !is_cmd {
            let mut data = line.to_vec();
            data.extend_from_slice(match a.eos {
                0 => b"\r\n".as_slice(),
                1 => b"\r",
                2 => b"\n",
                _ => b"",
            });
            self.deliver(a, &data);
            if a.auto {
                return self.read(a).await;
            }
            return Vec::new();
        }
        let text = String::from_utf8_lossy(line.get(2..).unwrap_or_default()).to_string();
        let mut words = text.split_whitespace();
        let cmd = words.next().unwrap_or("").to_ascii_lowercase();
        let args: Vec<&str> = words.collect();
        let num = |i: usize| args.get(i).and_then(|w| w.parse::<u64>().ok());
        let flag = |v: &mut bool| match num(0) {
            Some(n) => {
                *v = n != 0;
                Vec::new()
            }
            None => format!("{}\n", u8::from(*v)).into_bytes(),
        };
        match cmd.as_str() {
            "addr" => match num(0) {
                Some(n) if n <= 30 => {
                    a.addr = n as u8;
                    Vec::new()
                }
                Some(_) => Vec::new(),
                None => format!("{}\n", a.addr).into_bytes(),
            },
            "auto" => flag(&mut a.auto),
            "eoi" => flag(&mut a.eoi),
            "eot_enable" => flag(&mut a.eot_enable),
            "eos" => match num(0) {
                Some(n) if n <= 3 => {
                    a.eos = n as u8;
                    Vec::new()
                }
                Some(_) => Vec::new(),
                None => format!("{}\n", a.eos).into_bytes(),
            },
            "eot_char" => {
                if let Some(n) = num(0) {
                    a.eot_char = n as u8;
                }
                Vec::new()
            }
            "read_tmo_ms" => match num(0) {
                Some(n) if (1..=3000).contains(&n) => {
                    a.read_tmo = Duration::from_millis(n);
                    Vec::new()
                }
                _ => format!("{}\n", a.read_tmo.as_millis()).into_bytes(),
            },
            "read" => self.read(a).await,
            "clr" => {
                a.bus.remove(&a.addr);
                Vec::new()
            }
            "trg" => {
                if let Some(sim) = self.instruments.get(&a.addr) {
                    let _ = sim.execute("*TRG");
                }
                Vec::new()
            }
            "spoll" => {
                let addr = num(0).map(|n| n as u8).unwrap_or(a.addr);
                let stb = self
                    .instruments
                    .get(&addr)
                    .and_then(|s| s.execute("*STB?"))
                    .and_then(|b| String::from_utf8_lossy(&b).trim().parse::<u8>().ok())
                    .unwrap_or(0);
                format!("{stb}\n").into_bytes()
            }
            "srq" => b"0\n".to_vec(),
            "ver" => b"labmesh sim, Prologix-compatible GPIB adapter 1.0\n".to_vec(),
            "mode" => match num(0) {
                Some(_) => Vec::new(),
                None => b"1\n".to_vec(),
            },
            "ifc" | "savecfg" | "rst" | "loc" | "llo" => Vec::new(),
            other => {
                tracing::debug!("sim prologix: unknown command ++{other}");
                Vec::new()
            }
        }
    }

    /// Data for the addressed instrument: messages end at LF and at EOI.
    fn deliver(&self, a: &mut AdapterState, data: &[u8]) {
        let Some(sim) = self.instruments.get(&a.addr) else {
            return; // nobody listening at this address
        };
        let eoi = a.eoi;
        let dev = a.bus.entry(a.addr).or_default();
        dev.input.extend_from_slice(data);
        while let Some(i) = dev.input.iter().position(|b| *b == b'\n') {
            let msg: Vec<u8> = dev.input.drain(..=i).collect();
            dev.pending.push_back(text_of(&msg));
        }
        if eoi && !dev.input.is_empty() {
            let msg = std::mem::take(&mut dev.input);
            dev.pending.push_back(text_of(&msg));
        }
        if !sim.is_muted() {
            run_pending(sim, dev);
        }
    }

    /// `++read`: the addressed instrument's next answer, or nothing after
    /// the read timeout.
    async fn read(&self, a: &mut AdapterState) -> Vec<u8> {
        let Some(sim) = self.instruments.get(&a.addr) else {
            tokio::time::sleep(a.read_tmo).await;
            return Vec::new();
        };
        let deadline = tokio::time::Instant::now() + a.read_tmo;
        let dev = a.bus.entry(a.addr).or_default();
        if tokio::time::timeout_at(deadline, sim.wait_unmuted())
            .await
            .is_ok()
        {
            run_pending(sim, dev);
        }
        let Some(mut reply) = dev.output.pop_front() else {
            tokio::time::sleep_until(deadline).await;
            return Vec::new();
        };
        let latency = sim.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if a.eot_enable {
            reply.push(a.eot_char);
        }
        reply
    }
}

fn text_of(msg: &[u8]) -> String {
    String::from_utf8_lossy(msg)
        .trim_end_matches(['\n', '\r'])
        .to_string()
}

fn run_pending(sim: &SimPsu, dev: &mut Device) {
    while let Some(text) = dev.pending.pop_front() {
        if text.is_empty() {
            continue;
        }
        if let Some(mut reply) = sim.execute(&text) {
            reply.push(b'\n');
            dev.output.push_back(reply);
        }
    }
}

#[derive(Debug, Default)]
struct Device {
    input: Vec<u8>,
    pending: VecDeque<String>,
    output: VecDeque<Vec<u8>>,
}

#[derive(Debug)]
struct AdapterState {
    addr: u8,
    auto: bool,
    eoi: bool,
    eos: u8,
    eot_enable: bool,
    eot_char: u8,
    read_tmo: Duration,
    bus: HashMap<u8, Device>,
}

impl Default for AdapterState {
    /// The Prologix power-on defaults (address 5 here).
    fn default() -> Self {
        AdapterState {
            addr: 5,
            auto: true,
            eoi: true,
            eos: 0,
            eot_enable: false,
            eot_char: 0,
            read_tmo: Duration::from_millis(500),
            bus: HashMap::new(),
        }
    }
}
