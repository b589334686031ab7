//! Streams: named instrument calls run at a rate and published on
//! `stream.<relay_id>.<name>` (see `labmesh_proto::stream`).
//!
//! The instrument task owns the driver, so a stream sample is one more kind
//! of work for it, next to RPC calls and state polls: streams share the
//! instrument's queue, and a slow instrument delays only its own streams.
//!
//! Each stream runs on a grid of absolute deadlines `anchor + k * period`.
//! The task sleeps until the earliest deadline of its enabled streams (on
//! a timerfd, see `hrtimer`), starts that sample, and moves the stream to
//! its next deadline after now: deadlines that passed while the instrument
//! was busy are counted as missed, never made up in a burst, and the rate
//! never drifts with the time a call takes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use base64::Engine;
use labmesh_drivers::{Args, Description, DriverError, PushStream, Sampled};
use labmesh_proto::codes;
use labmesh_proto::mesh::encode;
use labmesh_proto::stream::{
    self, LastResult, StreamChanged, StreamSample, StreamSpec, StreamStatus, StreamsResult,
};
use labmesh_proto::{topic, ErrorBody};
use serde_json::Value;

use crate::publish::Bus;

/// Samples whose lateness and start time are kept for `lm.streams`.
const WINDOW: usize = 1024;
/// Actual rate is measured over at most this much recent time.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// A stream-control request, as decoded from an `lm.stream_*` call.
#[derive(Debug)]
pub(crate) enum Control {
    Add(StreamSpec),
    Remove(String),
    Enable(String),
    Disable(String),
    SetRate(String, f64),
}

/// A stream sample the instrument is running.
pub(crate) struct Due {
    pub(crate) id: u64,
    pub(crate) method: String,
    pub(crate) args: Args,
    pub(crate) deadline: Instant,
}

/// What a finished sample brings back.
pub(crate) struct Taken {
    pub(crate) id: u64,
    pub(crate) deadline: Instant,
    pub(crate) started: Instant,
    pub(crate) t_wall: f64,
    pub(crate) outcome: Result<Sampled, DriverError>,
}

struct Stream {
    /// Changes when the stream is added again: a sample of the old one
    /// that finishes later is not counted for the new one.
    id: u64,
    spec: StreamSpec,
    args: Args,
    push: bool,
    topic: Vec<u8>,
    period: Duration,
    anchor: Instant,
    k: u64,
    seq: u64,
    samples: u64,
    errors: u64,
    missed: u64,
    lateness: VecDeque<f64>,
    starts: VecDeque<Instant>,
    last_error: Option<ErrorBody>,
    last: Option<(StreamSample, Option<Vec<u8>>)>,
}

impl Stream {
    fn next_deadline(&self) -> Instant {
        self.anchor + self.period.mul_f64(self.k as f64)
    }

    /// Restart the grid at `at` (the first sample is due then).
    fn restart(&mut self, at: Instant) {
        self.anchor = at;
        self.k = 0;
    }

    fn status(&self) -> StreamStatus {
        let actual_hz = match (self.starts.front(), self.starts.back()) {
            (Some(a), Some(b)) if self.starts.len() > 1 && b > a => {
                (self.starts.len() - 1) as f64 / (*b - *a).as_secs_f64()
            }
            _ => 0.0,
        };
        let mut late: Vec<f64> = self.lateness.iter().copied().collect();
        late.sort_by(f64::total_cmp);
        let jitter_p99_s = if late.is_empty() {
            0.0
        } else {
            late[((late.len() - 1) as f64 * 0.99).round() as usize]
        };
        StreamStatus {
            spec: self.spec.clone(),
            push: self.push,
            samples: self.samples,
            errors: self.errors,
            missed: self.missed,
            actual_hz,
            jitter_p99_s,
            last_error: self.last_error.clone(),
        }
    }
}

fn period_of(hz: f64) -> Duration {
    Duration::from_secs_f64(1.0 / hz)
}

/// One instrument's streams.
pub(crate) struct Streams {
    relay_id: String,
    epoch: Instant,
    next_id: u64,
    list: Vec<Stream>,
    bus: Bus,
}

impl Streams {
    pub(crate) fn new(relay_id: &str, epoch: Instant, bus: Bus) -> Self {
        Streams {
            relay_id: relay_id.to_string(),
            epoch,
            next_id: 0,
            list: Vec::new(),
            bus,
        }
    }

    /// The definitions, for `lm.describe`.
    pub(crate) fn specs(&self) -> Vec<StreamSpec> {
        self.list.iter().map(|s| s.spec.clone()).collect()
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|s| s.spec.name == name)
    }

    fn not_found(name: &str) -> (i64, String) {
        (codes::NOT_FOUND, format!("no stream named {name:?}"))
    }

    /// Add (or replace) a stream after checking it against `description`.
    pub(crate) fn add(
        &mut self,
        spec: StreamSpec,
        description: &Description,
        now: Instant,
    ) -> Result<StreamChanged, (i64, String)> {
        spec.check().map_err(|why| (codes::BAD_REQUEST, why))?;
        let method = description.method(&spec.method).ok_or_else(|| {
            (
                codes::NOT_FOUND,
                format!("stream {:?}: unknown method {:?}", spec.name, spec.method),
            )
        })?;
        let args = method
            .bind(&spec.params)
            .map_err(|e| (e.code(), format!("stream {:?}: {e}", spec.name)))?;
        let name = spec.name.clone();
        if let Some(i) = self.find(&name) {
            if self.list[i].spec == spec {
                return Ok(StreamChanged {
                    name,
                    changed: false,
                    exists: true,
                });
            }
            if self.list[i].push {
                return Err((
                    codes::CONFLICT,
                    format!("stream {name:?} is the driver's own push stream"),
                ));
            }
            self.list.remove(i);
        } else if self.list.len() >= stream::MAX_STREAMS {
            return Err((
                codes::CONFLICT,
                format!("at most {} streams per instrument", stream::MAX_STREAMS),
            ));
        }
        self.next_id += 1;
        self.list.push(Stream {
            id: self.next_id,
            topic: topic::stream(&self.relay_id, &name),
            period: period_of(spec.hz),
            spec,
            args,
            push: false,
            anchor: now,
            k: 0,
            seq: 0,
            samples: 0,
            errors: 0,
            missed: 0,
            lateness: VecDeque::new(),
            starts: VecDeque::new(),
            last_error: None,
            last: None,
        });
        Ok(StreamChanged {
            name,
            changed: true,
            exists: true,
        })
    }

    /// Register a driver's push stream (no schedule).
    pub(crate) fn add_push(&mut self, p: &PushStream) -> bool {
        if !stream::valid_name(&p.name) || self.find(&p.name).is_some() {
            return false;
        }
        self.next_id += 1;
        self.list.push(Stream {
            id: self.next_id,
            topic: topic::stream(&self.relay_id, &p.name),
            period: Duration::ZERO,
            spec: StreamSpec {
                name: p.name.clone(),
                method: p.event.clone(),
                params: Value::Null,
                hz: stream::MAX_HZ,
                enabled: true,
            },
            args: Args::default(),
            push: true,
            anchor: self.epoch,
            k: 0,
            seq: 0,
            samples: 0,
            errors: 0,
            missed: 0,
            lateness: VecDeque::new(),
            starts: VecDeque::new(),
            last_error: None,
            last: None,
        });
        true
    }

    /// Apply a control request.
    pub(crate) fn control(
        &mut self,
        c: Control,
        description: &Description,
        now: Instant,
    ) -> Result<StreamChanged, (i64, String)> {
        let changed = |name: String, changed: bool, exists: bool| StreamChanged {
            name,
            changed,
            exists,
        };
        match c {
            Control::Add(spec) => self.add(spec, description, now),
            Control::Remove(name) => match self.find(&name) {
                Some(i) if self.list[i].push => Err((
                    codes::CONFLICT,
                    format!("stream {name:?} is the driver's own push stream: disable it"),
                )),
                Some(i) => {
                    self.list.remove(i);
                    Ok(changed(name, true, false))
                }
                None => Ok(changed(name, false, false)),
            },
            Control::Enable(name) => {
                let i = self.find(&name).ok_or_else(|| Self::not_found(&name))?;
                let s = &mut self.list[i];
                if s.spec.enabled {
                    return Ok(changed(name, false, true));
                }
                s.spec.enabled = true;
                s.restart(now);
                Ok(changed(name, true, true))
            }
            Control::Disable(name) => {
                let i = self.find(&name).ok_or_else(|| Self::not_found(&name))?;
                let s = &mut self.list[i];
                let was = s.spec.enabled;
                s.spec.enabled = false;
                Ok(changed(name, was, true))
            }
            Control::SetRate(name, hz) => {
                if !stream::valid_hz(hz) {
                    return Err((
                        codes::BAD_REQUEST,
                        format!("hz {hz} is outside {}..={}", stream::MIN_HZ, stream::MAX_HZ),
                    ));
                }
                let i = self.find(&name).ok_or_else(|| Self::not_found(&name))?;
                let s = &mut self.list[i];
                if s.push {
                    return Err((
                        codes::CONFLICT,
                        format!("stream {name:?} is pushed by the driver: it has no rate"),
                    ));
                }
                if s.spec.hz == hz {
                    return Ok(changed(name, false, true));
                }
                s.spec.hz = hz;
                s.period = period_of(hz);
                // The next sample one new period after the last one.
                let from = s.starts.back().copied().unwrap_or(now);
                s.restart((from + s.period).max(now));
                s.lateness.clear();
                s.starts.clear();
                Ok(changed(name, true, true))
            }
        }
    }

    /// `lm.streams`.
    pub(crate) fn status(&self) -> StreamsResult {
        StreamsResult {
            relay_id: self.relay_id.clone(),
            streams: self.list.iter().map(Stream::status).collect(),
        }
    }

    /// `lm.last`.
    pub(crate) fn last(&self, name: &str) -> Result<LastResult, (i64, String)> {
        let i = self.find(name).ok_or_else(|| Self::not_found(name))?;
        Ok(match &self.list[i].last {
            Some((h, bin)) => LastResult {
                sample: Some(h.clone()),
                binary_base64: bin
                    .as_ref()
                    .map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
            },
            None => LastResult {
                sample: None,
                binary_base64: None,
            },
        })
    }

    /// The earliest deadline of the enabled scheduled streams.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.list
            .iter()
            .filter(|s| s.spec.enabled && !s.push)
            .map(Stream::next_deadline)
            .min()
    }

    /// Whether a sample is due at `now`.
    pub(crate) fn is_due(&self, now: Instant) -> bool {
        self.next_deadline().is_some_and(|d| d <= now)
    }

    /// Take the most overdue sample: its stream moves to the first deadline
    /// after `now`, counting the ones skipped.
    pub(crate) fn take_due(&mut self, now: Instant) -> Option<Due> {
        let s = self
            .list
            .iter_mut()
            .filter(|s| s.spec.enabled && !s.push)
            .min_by_key(|s| s.next_deadline())?;
        let deadline = s.next_deadline();
        if deadline > now {
            return None;
        }
        let behind = (now - deadline).as_secs_f64() / s.period.as_secs_f64();
        // Deadlines strictly between this one and now are skipped.
        let skipped = behind.floor() as u64;
        s.missed += skipped;
        s.k += skipped + 1;
        Some(Due {
            id: s.id,
            method: s.spec.method.clone(),
            args: s.args.clone(),
            deadline,
        })
    }

    /// Publish a finished sample (dropped if its stream was removed, added
    /// again or disabled meanwhile).
    pub(crate) fn finish(&mut self, t: Taken) {
        let Some(s) = self.list.iter_mut().find(|s| s.id == t.id) else {
            return;
        };
        if !s.spec.enabled {
            return;
        }
        let late = t
            .started
            .saturating_duration_since(t.deadline)
            .as_secs_f64();
        push_window(&mut s.lateness, late);
        push_window(&mut s.starts, t.started);
        while s.starts.len() > 2
            && s.starts
                .front()
                .is_some_and(|f| t.started.duration_since(*f) > RATE_WINDOW)
        {
            s.starts.pop_front();
        }
        let t_mono = t
            .started
            .saturating_duration_since(self.epoch)
            .as_secs_f64();
        let outcome = t
            .outcome
            .map_err(|e| ErrorBody::new(e.code(), e.to_string()));
        publish(&self.relay_id, &self.bus, s, t.t_wall, t_mono, outcome);
    }

    /// Publish one event of push stream `name`.
    pub(crate) fn pushed(&mut self, name: &str, event: Result<Value, DriverError>) {
        let Some(s) = self.list.iter_mut().find(|s| s.push && s.spec.name == name) else {
            return;
        };
        if !s.spec.enabled {
            return;
        }
        let now = Instant::now();
        push_window(&mut s.starts, now);
        while s.starts.len() > 2
            && s.starts
                .front()
                .is_some_and(|f| now.duration_since(*f) > RATE_WINDOW)
        {
            s.starts.pop_front();
        }
        let t_mono = now.saturating_duration_since(self.epoch).as_secs_f64();
        let outcome = event
            .map(Sampled::Json)
            .map_err(|e| ErrorBody::new(e.code(), e.to_string()));
        publish(
            &self.relay_id,
            &self.bus,
            s,
            labmesh_proto::unix_now(),
            t_mono,
            outcome,
        );
    }
}

fn push_window<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() >= WINDOW {
        q.pop_front();
    }
    q.push_back(v);
}

fn publish(
    relay_id: &str,
    bus: &Bus,
    s: &mut Stream,
    t_wall: f64,
    t_mono: f64,
    outcome: Result<Sampled, ErrorBody>,
) {
    let mut header = StreamSample {
        relay_id: relay_id.to_string(),
        stream: s.spec.name.clone(),
        seq: s.seq,
        t_wall,
        t_mono,
        ok: true,
        value: None,
        error: None,
        binary: None,
    };
    let mut extra = None;
    match outcome {
        Ok(Sampled::Json(v)) => header.value = Some(v),
        Ok(Sampled::Binary(b)) => {
            header.binary = Some(b.len() as u64);
            extra = Some(b);
        }
        Err(e) => {
            header.ok = false;
            header.error = Some(e);
        }
    }
    let mut body = encode(&header);
    let size = body.len().max(extra.as_ref().map_or(0, Vec::len));
    if size > bus.max_body() {
        // Too large for the broker's bus: an error sample says so, instead
        // of a silent gap (or the broker dropping this relay's connection).
        labmesh_wire::warn_throttled!(%relay_id, stream = %s.spec.name, bytes = size, limit = bus.max_body(), "stream sample above the bus maximum");
        header.ok = false;
        header.value = None;
        header.binary = None;
        header.error = Some(ErrorBody::new(
            codes::TOO_LARGE,
            format!(
                "sample of {size} bytes is above the bus maximum of {} bytes ([broker] bus_max_msg, which the relay reads from the same file)",
                bus.max_body()
            ),
        ));
        extra = None;
        body = encode(&header);
    }
    s.seq += 1;
    s.samples += 1;
    if let Some(e) = &header.error {
        s.errors += 1;
        s.last_error = Some(e.clone());
    }
    // A full PUB queue drops the sample (subscribers see the seq gap).
    let _ = bus.offer(s.topic.clone(), body, extra.clone());
    s.last = Some((header, extra));
}
