//! A sleep precise to tens of microseconds, for stream deadlines.
//!
//! tokio's timer wheel has a 1 ms resolution: a 1 kHz stream scheduled on
//! it starts each sample up to a whole period late, and a 10 kHz stream
//! cannot run at all. On Linux a `timerfd` registered with the reactor
//! wakes the task at the deadline itself (the kernel's hrtimer, slack
//! ~50 µs), without a thread and without spinning. Elsewhere, or if the
//! timerfd cannot be made, tokio's sleep is used.

use std::time::Instant;

/// One instrument task's deadline timer.
pub(crate) struct HrTimer {
    #[cfg(target_os = "linux")]
    fd: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
}

impl HrTimer {
    pub(crate) fn new() -> Self {
        #[cfg(target_os = "linux")]
        {
            use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
            let fd = timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
            )
            .map_err(std::io::Error::from)
            .and_then(|fd| {
                // SAFETY: the OwnedFd is moved into the AsyncFd, which owns
                // it (open, the same descriptor) until it is dropped.
                unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        fd,
                        tokio::io::Interest::READABLE,
                    )
                }
                .map_err(std::io::Error::from)
            });
            match fd {
                Ok(fd) => HrTimer { fd: Some(fd) },
                Err(e) => {
                    tracing::warn!(error = %e, "no timerfd: stream deadlines use the 1 ms timer");
                    HrTimer { fd: None }
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        HrTimer {}
    }

    /// Wait until `deadline`. May return early (a stale expiry of an
    /// earlier, cancelled wait): callers check the clock again.
    pub(crate) async fn sleep_until(&mut self, deadline: Instant) {
        let now = Instant::now();
        if deadline <= now {
            return;
        }
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
            let d = deadline - now;
            let spec = Itimerspec {
                it_interval: Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: Timespec {
                    tv_sec: d.as_secs() as _,
                    // Never all zero: that would disarm the timer.
                    tv_nsec: d.subsec_nanos().max(1) as _,
                },
            };
            // Drop a stale expiry, then arm (relative: one clock read).
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(fd.get_ref(), &mut buf);
            if timerfd_settime(fd.get_ref(), TimerfdTimerFlags::empty(), &spec).is_ok() {
                loop {
                    let Ok(mut guard) = fd.readable().await else {
                        break;
                    };
                    match rustix::io::read(fd.get_ref(), &mut buf) {
                        Ok(_) => return,
                        Err(rustix::io::Errno::AGAIN) => guard.clear_ready(),
                        Err(_) => break,
                    }
                }
            }
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}
