//! One task per hosted instrument: it owns the ROUTER socket and the
//! instrument, so a call that the driver answers at once is received,
//! executed and answered in a single wake-up of one task.
//!
//! The instrument is either idle (held here) or busy: moved into the one
//! future that runs its current call or poll, and handed back when that
//! finishes. Requests that arrive meanwhile are decoded and checked at once
//! (bad ones are answered immediately), and valid calls wait in a bounded
//! queue, in arrival order.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::future::OptionFuture;
use labmesh_drivers::{BoxInstrument, DriverError};
use labmesh_proto::mesh::{encode, Reply};
use labmesh_proto::{codes, ErrorBody};
use labmesh_wire::socket::{AfterError, RecvErrors};
use labmesh_wire::AsyncSocket;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::outbox::Outbox;
use crate::publish::{Outgoing, StatePublisher};
use crate::rpc::{self, Call, Handled, RpcContext};

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

/// Settings of one instrument's task.
pub(crate) struct Settings {
    pub(crate) poll_interval: Duration,
    pub(crate) call_timeout: Duration,
}

pub(crate) async fn run(
    mut router: AsyncSocket,
    mut ctx: RpcContext,
    inst: BoxInstrument,
    settings: Settings,
    state: mpsc::Sender<Outgoing>,
    mut stop: watch::Receiver<bool>,
) {
    let relay_id = ctx.relay_id.clone();
    let mut publisher = StatePublisher::new(&relay_id, settings.poll_interval, state);
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
    let mut retry = tokio::time::interval(OUTBOX_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !outbox.is_empty() {
            outbox.flush(&mut router);
        }
        if let Some(inst) = idle.take() {
            if let Some(call) = queue.pop_front() {
                busy = Some(start_call(inst, call, settings.call_timeout));
                busy_with_call = true;
            } else if poll_due && !stopping {
                poll_due = false;
                busy = Some(start_poll(inst, settings.call_timeout));
                busy_with_call = false;
            } else {
                idle = Some(inst);
            }
        }
        if stopping && busy.is_none() {
            // Replies still waiting for a full pipe are given up here, as
            // the socket's linger gives up what it holds.
            break;
        }
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
                }
            }
            _ = stop.changed(), if !stopping => {
                // Stop taking requests; queued calls finish and are answered.
                stopping = true;
            }
            frames = router.recv_or_signal(), if !stopping => {
                let frames = match frames {
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
                match rpc::handle(&mut ctx, frames) {
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
            _ = retry.tick(), if !outbox.is_empty() => {}
            // An orphaned lease expires (and is published) on time.
            _ = tokio::time::sleep_until(ctx.lease.deadline().unwrap_or_else(tokio::time::Instant::now)), if ctx.lease.deadline().is_some() => {
                ctx.lease.expire_due();
            }
            _ = ticker.tick() => {
                if busy.is_none() {
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
