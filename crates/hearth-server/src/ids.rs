//! Where new ids come from, injected: random in service, predictable in
//! tests that want to name what they will get.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A source of sandbox ids.
pub trait IdSource: Send + Sync + fmt::Debug {
    /// A new sandbox id, never handed out before.
    fn sandbox_id(&self) -> String;
}

/// Random ids from the operating system (`sb-` and 12 hex digits).
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn sandbox_id(&self) -> String {
        hearth_sandbox::lifecycle::new_sandbox_id()
    }
}

/// `sb-<prefix>-1`, `sb-<prefix>-2`, ... for tests.
#[derive(Debug, Default)]
pub struct SequentialIds {
    prefix: String,
    next: AtomicU64,
}

impl SequentialIds {
    /// Ids `sb-<prefix>-<n>` from 1.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            next: AtomicU64::new(1),
        }
    }
}

impl IdSource for SequentialIds {
    fn sandbox_id(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("sb-{}-{n}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_count_and_random_ids_differ() {
        let ids = SequentialIds::new("t");
        assert_eq!(ids.sandbox_id(), "sb-t-1");
        assert_eq!(ids.sandbox_id(), "sb-t-2");
        assert_ne!(RandomIds.sandbox_id(), RandomIds.sandbox_id());
    }
}
