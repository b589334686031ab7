//! One task per hosted instrument: it owns the ROUTER socket and the
//! instrument, so a call that the driver answers at once is received,
//! executed and answered in a single wake-up of one task.
//!
//! The instrument is either idle (held here) or busy: moved into the one
//! future that runs its current call or poll, and handed back when that
//! finishes. Requests that arrive meanwhile are decoded and checked at once
//! (bad ones are answered immediately), and valid calls wait in a bounded
//! queue, in arrival order.
//!
//! Stream samples are the third kind of work (see `streams`). When calls
//! wait and a sample is due, they alternate: streams never starve RPC
//! calls, and a flood of calls cannot silence a stream (its missed
//! deadlines are counted).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::future::OptionFuture;
use futures::stream::{BoxStream, SelectAll, StreamExt};
use labmesh_drivers::{BoxInstrument, DriverError, PushStream};
use labmesh_proto::mesh::{encode, Reply};
use labmesh_proto::{codes, ErrorBody};
use labmesh_wire::socket::{AfterError, RecvErrors};
use labmesh_wire::AsyncSocket;
use serde_json::Value;
use tokio::sync::watch;

use crate::gateway::{self, Port};
use crate::hrtimer::HrTimer;
use crate::outbox::Outbox;
use crate::publish::{Bus, StatePublisher};
use crate::rpc::{self, Call, Handled, RpcContext};
use crate::streams::{Due, Streams, Taken};

/// Calls that may wait for a busy instrument before new ones get 503.
const QUEUE_LIMIT: usize = 256;

/// While replies wait for a full pipe, how often they are retried even if
/// libzmq's "room again" signal was consumed by another call on the socket
/// (the signal is the usual trigger; this only bounds a missed one).
const OUTBOX_RETRY: Duration = Duration::from_millis(20);

/// What the instrument was doing, and how it went.
enum Work {
    Call {
        ident: Vec<u8>,
        rpc_uuid: Value,
        method: String,
        outcome: Result<Value, DriverError>,
    },
    Poll(Result<Value, DriverError>),
    Stream(Taken),
    /// A LAN gateway message (answered by the job itself).
    Lan,
}

type Busy = Pin<Box<dyn Future<Output = (BoxInstrument, Work)> + Send>>;

fn start_call(mut inst: BoxInstrument, call: Call, deadline: Duration) -> Busy {
    Box::pin(async move {
        let Call {
            ident,
            rpc_uuid,
            method,
            args,
        } = call;
        let outcome = match tokio::time::timeout(deadline, inst.call(&method, args)).await {
            Ok(r) => r,
            Err(_) => Err(DriverError::Timeout(deadline)),
        };
        (
            inst,
            Work::Call {
                ident,
                rpc_uuid,
                method,
                outcome,
            },
        )
    })
}

fn start_poll(mut inst: BoxInstrument, deadline: Duration) -> Busy {
    Box::pin(async move {
        let r = match tokio::time::timeout(deadline, inst.poll()).await {
            Ok(r) => r,
            Err(_) => Err(DriverError::Timeout(deadline)),
        };
        (inst, Work::Poll(r))
    })
}

fn start_sample(mut inst: BoxInstrument, due: Due, deadline: Duration) -> Busy {
    Box::pin(async move {
        let started = Instant::now();
        let t_wall = labmesh_proto::unix_now();
        let outcome = match tokio::time::timeout(deadline, inst.sample(&due.method, due.args)).await
        {
            Ok(r) => r,
            Err(_) => Err(DriverError::Timeout(deadline)),
        };
        (
            inst,
            Work::Stream(Taken {
                id: due.id,
                deadline: due.deadline,
                started,
                t_wall,
                outcome,
            }),
        )
    })
}

fn start_lan(inst: BoxInstrument, job: gateway::Job, deadline: Duration) -> Busy {
    Box::pin(async move { (gateway::run(inst, job, deadline).await, Work::Lan) })
}

type Pushed = BoxStream<'static, (String, Result<Value, DriverError>)>;

/// One stream of `(name, event)` over every push stream of the driver.
fn push_events(push: Vec<PushStream>) -> SelectAll<Pushed> {
    futures::stream::select_all(push.into_iter().map(|p| {
        let name = p.name;
        futures::stream::unfold(p.events, move |mut rx| {
            let name = name.clone();
            async move { rx.recv().await.map(|ev| ((name, ev), rx)) }
        })
        .boxed()
    }))
}

/// Settings of one instrument's task.
pub(crate) struct Settings {
    pub(crate) poll_interval: Duration,
    pub(crate) call_timeout: Duration,
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    mut router: AsyncSocket,
    mut ctx: RpcContext,
    inst: BoxInstrument,
    settings: Settings,
    mut streams: Streams,
    push: Vec<PushStream>,
    state: Bus,
    mut stop: watch::Receiver<bool>,
    mut lan: Option<Port>,
) {
    let relay_id = ctx.relay_id.clone();
    let mut publisher = StatePublisher::new(&relay_id, settings.poll_interval, state);
    let mut pushed = push_events(push);
    let mut timer = HrTimer::new();
    // Whether the last work was a stream sample (calls go next if waiting).
    let mut last_was_sample = false;
    // `interval(ZERO)` panics: a zero period (`Hosted::poll_every(ZERO)`)
    // polls every millisecond at most instead.
    let mut ticker = tokio::time::interval(settings.poll_interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle: Option<BoxInstrument> = Some(inst);
    let mut busy: Option<Busy> = None;
    let mut busy_with_call = false;
    let mut queue: VecDeque<Call> = VecDeque::new();
    let mut poll_due = false;
    let mut stopping = false;
    let mut errors = RecvErrors::new("relay instrument");
    let mut outbox = Outbox::new(&relay_id);
    // Whether the last work was a LAN message (mesh calls go next if waiting).
    let mut last_was_lan = false;
    let mut retry = tokio::time::interval(OUTBOX_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !outbox.is_empty() {
            outbox.flush(&mut router);
        }
        Port::sync(&mut lan, &ctx.lease);
        if let Some(inst) = idle.take() {
            let now = Instant::now();
            let sample_due = !stopping && streams.is_due(now);
            let others_wait = !queue.is_empty() || Port::has_jobs(&lan) || (poll_due && !stopping);
            let lan_next = Port::has_jobs(&lan) && (queue.is_empty() || !last_was_lan);
            let due = if sample_due && (!others_wait || !last_was_sample) {
                streams.take_due(now)
            } else {
                None
            };
            if let Some(due) = due {
                busy = Some(start_sample(inst, due, settings.call_timeout));
                busy_with_call = false;
                last_was_sample = true;
            } else if let Some(job) = lan_next.then(|| Port::next_job(&mut lan)).flatten() {
                busy = Some(start_lan(inst, job, settings.call_timeout));
                busy_with_call = true;
                last_was_sample = false;
                last_was_lan = true;
            } else if let Some(call) = queue.pop_front() {
                busy = Some(start_call(inst, call, settings.call_timeout));
                busy_with_call = true;
                last_was_sample = false;
                last_was_lan = false;
            } else if poll_due && !stopping {
                poll_due = false;
                busy = Some(start_poll(inst, settings.call_timeout));
                busy_with_call = false;
                last_was_sample = false;
            } else {
                idle = Some(inst);
            }
        }
        if stopping && busy.is_none() {
            // Replies still waiting for a full pipe are given up here, as
            // the socket's linger gives up what it holds.
            break;
        }
        // The next stream deadline, while the instrument is idle (a busy
        // instrument looks again when it is done).
        let wake = if idle.is_some() && !stopping {
            streams.next_deadline()
        } else {
            None
        };
        // Only while replies wait for room does a wake-up without a
        // message matter (the loop's top flushes them); otherwise the
        // socket waits on for the next request without another turn of
        // this loop.
        let report_signal = !outbox.is_empty();
        tokio::select! {
            biased;
            Some((inst, work)) = OptionFuture::from(busy.as_mut()), if busy.is_some() => {
                busy = None;
                // The driver may have learned its identity (once the link
                // opened): `lm.describe` answers what it says now. Asked
                // cheaply; the description is rebuilt only on a change.
                if inst.identity() != ctx.description.identity {
                    ctx.description = inst.describe();
                }
                idle = Some(inst);
                match work {
                    Work::Call { ident, rpc_uuid, method, outcome } => {
                        let reply = rpc::reply_for(&relay_id, &method, rpc_uuid, outcome);
                        outbox.send(&mut router, &ident, reply);
                    }
                    Work::Poll(Ok(v)) => publisher.publish(v),
                    Work::Poll(Err(e)) => tracing::warn!(%relay_id, error = %e, "poll failed"),
                    Work::Stream(taken) => streams.finish(taken),
                    Work::Lan => {}
                }
            }
            _ = timer.sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
            Some((name, event)) = pushed.next(), if !pushed.is_empty() => {
                streams.pushed(&name, event);
            }
            _ = stop.changed(), if !stopping => {
                // Stop taking requests; queued calls finish and are answered.
                stopping = true;
            }
            frames = router.recv_or_signal_meta(report_signal), if !stopping => {
                let (frames, user) = match frames {
                    Ok(Some(f)) => {
                        errors.ok();
                        f
                    }
                    // A pipe may have room again: the loop's top flushes.
                    Ok(None) => continue,
                    Err(e) => match errors.failed(&e).await {
                        AfterError::Retry => continue,
                        AfterError::Stop => break,
                    },
                };
                match rpc::handle(&mut ctx, &mut streams, frames, user.as_deref()) {
                    Handled::Reply(ident, body) => outbox.send(&mut router, &ident, body),
                    Handled::Call(call) if queue.len() >= QUEUE_LIMIT => {
                        tracing::warn!(%relay_id, method = %call.method, "instrument queue full");
                        let body = encode(&Reply::RpcError {
                            rpc_uuid: call.rpc_uuid,
                            error: ErrorBody::new(codes::UNAVAILABLE, format!("{relay_id}: instrument queue full, try again")),
                        });
                        outbox.send(&mut router, &call.ident, body);
                    }
                    Handled::Call(call) => queue.push_back(call),
                    Handled::Nothing => {}
                }
            }
            op = Port::recv(&mut lan), if lan.is_some() && !stopping => {
                if let Some(port) = lan.as_mut() {
                    port.handle(op, &mut ctx.lease, &relay_id);
                }
            }
            _ = retry.tick(), if !outbox.is_empty() => {}
            // An orphaned lease expires (and is published) on time.
            _ = tokio::time::sleep_until(ctx.lease.deadline().unwrap_or_else(tokio::time::Instant::now)), if ctx.lease.deadline().is_some() => {
                ctx.lease.expire_due();
            }
            _ = ticker.tick() => {
                if busy.is_none() || last_was_sample {
                    // (A stream sample is short: the poll follows it.)
                    poll_due = true;
                } else if busy_with_call {
                    publisher.republish_stale();
                }
            }
        }
    }
    if let Some(mut inst) = idle {
        inst.shutdown().await;
    }
    tracing::debug!(%relay_id, "instrument task stopped");
}
