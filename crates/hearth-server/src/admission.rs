//! Admission control: a create is admitted only if the host can hold the
//! sandbox next to all the others, so that too many sandboxes get a clear
//! 429 instead of pushing the host into swap, its OOM killer or a full
//! disk.
//!
//! Disk: a sandbox's disk is allocated in full when its VM starts (see
//! `hearth_vm::scratch`), so the filesystem's free space already counts
//! every running sandbox; what admission adds is the disks admitted but not
//! allocated yet (booting), and a reserve kept free for the store and the
//! logs. The free space is measured by the caller and passed in, so the
//! decision is a pure function.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use hearth_proto::ByteSize;
use serde::Serialize;
use utoipa::ToSchema;

/// Host memory each VM costs beyond its guest memory (QEMU itself, TCG
/// translation buffers, page tables), counted against the memory budget.
pub const VM_OVERHEAD: ByteSize = ByteSize::mib(64);

/// What the host may give to sandboxes at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Capacity {
    /// Most sandboxes alive at once.
    pub max_sandboxes: u32,
    /// Guest memory plus per-VM overhead, summed over live sandboxes, bytes.
    pub memory_bytes: u64,
    /// vCPUs summed over live sandboxes.
    pub vcpus: u32,
    /// Disk space kept free on the home's filesystem, for the store and the
    /// logs: a create that would leave less is refused.
    #[serde(default)]
    pub disk_reserve_bytes: u64,
}

/// The default [`Capacity::disk_reserve_bytes`].
pub const DEFAULT_DISK_RESERVE: ByteSize = ByteSize::mib(1024);

impl Capacity {
    /// A budget from this host: 80% of its memory, 4 vCPUs per host CPU
    /// (sandboxes mostly wait), at most 256 sandboxes.
    pub fn from_host() -> Self {
        let mem_total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map(|kb| kb * 1024)
            .unwrap_or(4 << 30);
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        Self {
            max_sandboxes: 256,
            memory_bytes: mem_total / 10 * 8,
            vcpus: cpus * 4,
            disk_reserve_bytes: DEFAULT_DISK_RESERVE.bytes(),
        }
    }
}

/// Which limit refused a create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `sandboxes`, `memory`, `vcpus` or `disk`.
    pub limit: &'static str,
    /// For a human: what was asked, what is in use, what the budget is.
    pub message: String,
}

#[derive(Debug, Default)]
struct Used {
    sandboxes: u32,
    memory_bytes: u64,
    vcpus: u32,
    /// Disks admitted but not allocated yet.
    pending_disk: u64,
}

/// The running total of what live sandboxes hold.
#[derive(Debug, Clone)]
pub struct Admission {
    capacity: Capacity,
    used: Arc<Mutex<Used>>,
}

/// What one admitted sandbox holds; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    memory_bytes: u64,
    vcpus: u32,
    /// The disk still counted as pending.
    pending_disk: AtomicU64,
    used: Arc<Mutex<Used>>,
}

impl Reservation {
    /// The sandbox's disk is allocated on the filesystem now (its VM
    /// started): the free space counts it from here on.
    pub fn disk_allocated(&self) {
        let mut used = self.used.lock();
        used.pending_disk -= self.pending_disk.swap(0, Ordering::SeqCst);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut used = self.used.lock();
        used.sandboxes -= 1;
        used.memory_bytes -= self.memory_bytes;
        used.vcpus -= self.vcpus;
        used.pending_disk -= *self.pending_disk.get_mut();
    }
}

/// What is in use now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Usage {
    /// Live sandboxes.
    pub sandboxes: u32,
    /// Memory held, bytes.
    pub memory_bytes: u64,
    /// vCPUs held.
    pub vcpus: u32,
}

impl Admission {
    /// Nothing in use yet.
    pub fn new(capacity: Capacity) -> Self {
        Self {
            capacity,
            used: Arc::default(),
        }
    }

    /// The budget.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// What is in use now.
    pub fn usage(&self) -> Usage {
        let used = self.used.lock();
        Usage {
            sandboxes: used.sandboxes,
            memory_bytes: used.memory_bytes,
            vcpus: used.vcpus,
        }
    }

    /// Reserve room for a sandbox with `memory`, `vcpus` and `disk`, or say
    /// which limit it would break. `free_disk` is what the home's
    /// filesystem has free now (`None` when it could not be measured: the
    /// disk is then not checked here, and allocating it still fails
    /// cleanly when it does not fit).
    pub fn reserve(
        &self,
        memory: ByteSize,
        vcpus: u32,
        disk: ByteSize,
        free_disk: Option<u64>,
    ) -> Result<Reservation, Refusal> {
        let memory_bytes = memory.bytes() + VM_OVERHEAD.bytes();
        let mut used = self.used.lock();
        let cap = self.capacity;
        if used.sandboxes + 1 > cap.max_sandboxes {
            return Err(Refusal {
                limit: "sandboxes",
                message: format!(
                    "the server already runs {} sandboxes, its limit (--max-sandboxes {}); destroy one or wait for one to end",
                    used.sandboxes, cap.max_sandboxes
                ),
            });
        }
        if used.memory_bytes + memory_bytes > cap.memory_bytes {
            return Err(Refusal {
                limit: "memory",
                message: format!(
                    "not enough memory: this sandbox needs {} MiB ({memory} plus {VM_OVERHEAD} VM overhead), {} MiB of the {} MiB budget is in use (--memory-budget); destroy a sandbox or ask for less memory",
                    memory_bytes >> 20,
                    used.memory_bytes >> 20,
                    cap.memory_bytes >> 20,
                ),
            });
        }
        if used.vcpus + vcpus > cap.vcpus {
            return Err(Refusal {
                limit: "vcpus",
                message: format!(
                    "not enough vCPUs: this sandbox needs {vcpus}, {} of the {} budget are in use (--vcpu-budget); destroy a sandbox or ask for fewer vCPUs",
                    used.vcpus, cap.vcpus
                ),
            });
        }
        if let Some(free) = free_disk {
            let available = free.saturating_sub(used.pending_disk);
            if available < disk.bytes().saturating_add(cap.disk_reserve_bytes) {
                return Err(Refusal {
                    limit: "disk",
                    message: format!(
                        "not enough free disk: this sandbox's disk needs {} MiB, the host's filesystem has {} MiB free ({} MiB of it promised to sandboxes still booting) and keeps {} MiB in reserve (--disk-reserve); destroy a sandbox, free disk space, or ask for a smaller disk",
                        disk.bytes() >> 20,
                        free >> 20,
                        used.pending_disk >> 20,
                        cap.disk_reserve_bytes >> 20,
                    ),
                });
            }
        }
        used.sandboxes += 1;
        used.memory_bytes += memory_bytes;
        used.vcpus += vcpus;
        used.pending_disk += disk.bytes();
        Ok(Reservation {
            memory_bytes,
            vcpus,
            pending_disk: AtomicU64::new(disk.bytes()),
            used: self.used.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max: u32, mem_mib: u64, vcpus: u32) -> Admission {
        Admission::new(Capacity {
            max_sandboxes: max,
            memory_bytes: ByteSize::mib(mem_mib).bytes(),
            vcpus,
            disk_reserve_bytes: ByteSize::mib(100).bytes(),
        })
    }

    fn reserve(a: &Admission, memory: ByteSize, vcpus: u32) -> Result<Reservation, Refusal> {
        a.reserve(memory, vcpus, ByteSize::mib(16), None)
    }

    #[test]
    fn each_limit_refuses_with_its_name_and_frees_on_drop() {
        let a = admission(2, 10_000, 100);
        let r1 = reserve(&a, ByteSize::mib(256), 1).unwrap();
        let _r2 = reserve(&a, ByteSize::mib(256), 1).unwrap();
        let refused = reserve(&a, ByteSize::mib(256), 1).unwrap_err();
        assert_eq!(refused.limit, "sandboxes");
        assert!(
            refused.message.contains("--max-sandboxes 2"),
            "{}",
            refused.message
        );
        drop(r1);
        assert_eq!(a.usage().sandboxes, 1);
        reserve(&a, ByteSize::mib(256), 1).unwrap();

        let a = admission(10, 1000, 100);
        let _r = reserve(&a, ByteSize::mib(512), 1).unwrap();
        let refused = reserve(&a, ByteSize::mib(512), 1).unwrap_err();
        assert_eq!(refused.limit, "memory");
        assert!(
            refused.message.contains("needs 576 MiB"),
            "{}",
            refused.message
        );
        assert!(
            refused.message.contains("of the 1000 MiB budget"),
            "{}",
            refused.message
        );

        let a = admission(10, 100_000, 3);
        let _r = reserve(&a, ByteSize::mib(256), 2).unwrap();
        assert_eq!(
            reserve(&a, ByteSize::mib(256), 2).unwrap_err().limit,
            "vcpus"
        );
        assert_eq!(a.usage().vcpus, 2);
    }

    #[test]
    fn the_disk_needs_room_above_the_reserve_counting_disks_not_allocated_yet() {
        let a = admission(10, 100_000, 100);
        let gib = ByteSize::gib(1);
        let free = Some(ByteSize::mib(2600).bytes());
        // 2600 MiB free, 100 MiB reserve: two 1 GiB disks fit while booting...
        let first = a.reserve(ByteSize::mib(256), 1, gib, free).unwrap();
        let second = a.reserve(ByteSize::mib(256), 1, gib, free).unwrap();
        // ...a third does not, and says why.
        let refused = a.reserve(ByteSize::mib(256), 1, gib, free).unwrap_err();
        assert_eq!(refused.limit, "disk");
        for needle in [
            "needs 1024 MiB",
            "2600 MiB free",
            "2048 MiB of it promised",
            "100 MiB in reserve",
            "--disk-reserve",
        ] {
            assert!(
                refused.message.contains(needle),
                "{needle}: {}",
                refused.message
            );
        }
        // Once allocated, the free space itself counts the first disk.
        first.disk_allocated();
        first.disk_allocated();
        let after = Some(ByteSize::mib(2600 - 1024).bytes());
        a.reserve(ByteSize::mib(256), 1, ByteSize::mib(500), after)
            .unwrap_err();
        drop(second);
        let third = a.reserve(ByteSize::mib(256), 1, gib, after).unwrap();
        drop((first, third));
        assert_eq!(a.used.lock().pending_disk, 0);
        // Unmeasured free space: only the other limits apply.
        a.reserve(ByteSize::mib(256), 1, ByteSize::gib(64), None)
            .unwrap();
    }
}
