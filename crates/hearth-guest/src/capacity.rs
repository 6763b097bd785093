//! How many requests of each kind the agent serves at once.
//!
//! The agent's blocking threads and memory are shared by every request. A
//! request that holds its share for long (a download the host reads
//! slowly, a command that runs for an hour, a disk that hangs) must not
//! starve the others, so each kind has its own bound, all of them together
//! below the runtime's [`crate::agent::MAX_BLOCKING_THREADS`] where they use
//! blocking threads. A request that finds its kind full is answered at once
//! with [`GuestError::Busy`] (503), and the other kinds keep working.

use std::fmt;
use std::sync::Arc;

use hearth_proto::limits::{
    MAX_CONCURRENT_CONTROL_CALLS, MAX_CONCURRENT_EXECS, MAX_CONCURRENT_FILE_OPS,
    MAX_CONCURRENT_TUNNELS,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{GuestError, Result};

/// A kind of request, bounded on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// File transfers and operations (`/v1/files*`), for as long as a
    /// transfer streams.
    File,
    /// Commands (`/v1/exec`), for as long as they run.
    Exec,
    /// Reverse tunnels (`/v1/tunnel`), for as long as they are open.
    Tunnel,
    /// Hello, usage and sync calls. Kill and shutdown are never refused.
    Control,
}

impl RequestKind {
    const ALL: [RequestKind; 4] = [Self::File, Self::Exec, Self::Tunnel, Self::Control];

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::File => "file",
            Self::Exec => "exec",
            Self::Tunnel => "tunnel",
            Self::Control => "control",
        })
    }
}

/// The bound of each [`RequestKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityLimits {
    /// Concurrent file operations and transfers.
    pub file: usize,
    /// Concurrent commands.
    pub exec: usize,
    /// Open tunnels.
    pub tunnel: usize,
    /// Concurrent hello, usage and sync calls.
    pub control: usize,
}

impl Default for CapacityLimits {
    fn default() -> Self {
        Self {
            file: MAX_CONCURRENT_FILE_OPS,
            exec: MAX_CONCURRENT_EXECS,
            tunnel: MAX_CONCURRENT_TUNNELS,
            control: MAX_CONCURRENT_CONTROL_CALLS,
        }
    }
}

impl CapacityLimits {
    fn of(&self, kind: RequestKind) -> usize {
        match kind {
            RequestKind::File => self.file,
            RequestKind::Exec => self.exec,
            RequestKind::Tunnel => self.tunnel,
            RequestKind::Control => self.control,
        }
    }
}

/// One semaphore per [`RequestKind`].
#[derive(Debug)]
pub struct Capacity {
    limits: CapacityLimits,
    slots: [Arc<Semaphore>; 4],
}

/// A request's place in its kind; the place frees when this drops, so it
/// goes with whatever does the work (a streaming task, a blocking closure).
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Capacity {
    /// Room for `limits` requests of each kind.
    pub fn new(limits: CapacityLimits) -> Self {
        Self {
            limits,
            slots: RequestKind::ALL.map(|kind| Arc::new(Semaphore::new(limits.of(kind)))),
        }
    }

    /// Take a place for a request of `kind`, or [`GuestError::Busy`] at
    /// once when the kind is full. Never waits: a full kind means requests
    /// are stuck or the host sends too many, and waiting would only hide
    /// that.
    pub fn try_acquire(&self, kind: RequestKind) -> Result<Slot> {
        self.slots[kind.index()]
            .clone()
            .try_acquire_owned()
            .map(|permit| Slot { _permit: permit })
            .map_err(|_| GuestError::Busy {
                kind,
                limit: self.limits.of(kind),
            })
    }

    /// Requests of `kind` being served now.
    pub fn in_use(&self, kind: RequestKind) -> usize {
        self.limits.of(kind) - self.slots[kind.index()].available_permits()
    }
}

impl Default for Capacity {
    fn default() -> Self {
        Self::new(CapacityLimits::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_proto::ErrorCode;

    fn small() -> Capacity {
        Capacity::new(CapacityLimits {
            file: 2,
            exec: 1,
            tunnel: 1,
            control: 1,
        })
    }

    #[test]
    fn a_full_kind_is_busy_and_the_others_are_not() {
        let capacity = small();
        let first = capacity.try_acquire(RequestKind::File).unwrap();
        let _second = capacity.try_acquire(RequestKind::File).unwrap();
        let error = capacity.try_acquire(RequestKind::File).unwrap_err();
        assert_eq!(error.code(), ErrorCode::Busy);
        assert_eq!(error.status().as_u16(), 503);
        let message = error.to_string();
        assert!(
            message.contains("busy with 2 concurrent file operations")
                && message.contains("retry later"),
            "{message}"
        );
        // Other kinds are untouched.
        let _exec = capacity.try_acquire(RequestKind::Exec).unwrap();
        let _control = capacity.try_acquire(RequestKind::Control).unwrap();
        assert_eq!(capacity.in_use(RequestKind::File), 2);
        // A place frees when its slot drops.
        drop(first);
        assert_eq!(capacity.in_use(RequestKind::File), 1);
        let _third = capacity.try_acquire(RequestKind::File).unwrap();
    }

    #[test]
    fn every_kind_is_bounded_separately() {
        let capacity = small();
        for kind in RequestKind::ALL {
            let held: Vec<Slot> = (0..capacity.limits.of(kind))
                .map(|_| capacity.try_acquire(kind).unwrap())
                .collect();
            let error = capacity.try_acquire(kind).unwrap_err();
            assert!(error.to_string().contains(&format!(" {kind} ")), "{error}");
            drop(held);
            assert_eq!(capacity.in_use(kind), 0);
        }
    }

    #[test]
    fn defaults_leave_blocking_threads_for_every_kind() {
        let limits = CapacityLimits::default();
        // File and control work may each park blocking threads (a hung
        // disk); together they must leave some for exec's forks.
        assert!(limits.file + limits.control < crate::agent::MAX_BLOCKING_THREADS);
    }
}
