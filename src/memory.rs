//! Giving freed memory back to the system (glibc).
//!
//! Measured (issue 10, item 12): five rounds of 2000 connections each took
//! the broker from 16 to 136 MB and a relay from 18 to 138 MB (the first
//! round kept ~27 KB per connection), and neither shrank, though their open
//! files were back to the start. Calling `malloc_trim(0)` in the idle
//! process (from gdb) brought them back to 16.5 and 18.2 MB: the memory was
//! freed (libzmq frees a connection's buffers and pipes when it closes; no
//! map of ours keeps a connection), but glibc kept the pages, as it only
//! returns the top of a heap by itself. `glibc.malloc.arena_max=1` changed
//! nothing.
//!
//! So every node process checks once a second whether its RSS exceeds
//! what is allocated by more than [`SLACK`] beyond the overhead seen after
//! the last trim, and trims then. A trim costs a walk of the free lists;
//! a node whose memory is in use is never trimmed twice for it.

use std::time::Duration;

/// Freed but resident bytes tolerated before a trim.
const SLACK: u64 = 16 * 1024 * 1024;
/// Interval between checks.
const EVERY: Duration = Duration::from_secs(1);

/// Environment variable that turns trimming off when set to `0` (to
/// measure a node without it, as `labmesh bench abuse` does).
pub const TRIM_ENV: &str = "LABMESH_MALLOC_TRIM";

/// Start the trimming task on the current runtime (a no-op where the C
/// library is not glibc, or with `LABMESH_MALLOC_TRIM=0`). It ends with the
/// runtime.
pub fn keep_trimmed() {
    if std::env::var_os(TRIM_ENV).is_some_and(|v| v == "0") {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut overhead = glibc::overhead();
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (Some(rss), Some(used), Some(base)) = (glibc::rss(), glibc::allocated(), overhead)
            else {
                overhead = glibc::overhead();
                continue;
            };
            if rss > used.saturating_add(base).saturating_add(SLACK) {
                glibc::trim();
                overhead = glibc::overhead();
                tracing::debug!(before = rss, after = ?glibc::rss(), "freed memory returned to the system");
            }
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    /// Resident bytes of this process (`/proc/self/statm`, field 2).
    pub(super) fn rss() -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Some(pages * u64::try_from(page).ok()?)
    }

    /// Bytes malloc has handed out and not had back (heap and mmap).
    pub(super) fn allocated() -> Option<u64> {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let m = unsafe { libc::mallinfo2() };
        u64::try_from(m.uordblks.saturating_add(m.hblkhd)).ok()
    }

    /// What is resident beyond the allocated bytes: code, stacks, libraries.
    pub(super) fn overhead() -> Option<u64> {
        Some(rss()?.saturating_sub(allocated()?))
    }

    pub(super) fn trim() {
        // SAFETY: malloc_trim is thread-safe and has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
