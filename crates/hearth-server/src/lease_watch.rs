//! Deciding when another node is dead: pure bookkeeping over what this node
//! saw of the others' heartbeats, fed the time, tested without sleeping.
//!
//! A node counts as dead when this node has watched its heartbeat count
//! stand still for a whole lease TTL. Time is this node's own monotonic
//! clock, never the other node's timestamps, so clock skew between hosts
//! cannot expire a live node. And when this node itself could not look
//! (the database was unreachable, the process was stalled) for more than
//! half a TTL, it forgets what it saw and starts watching afresh: nobody
//! could heartbeat through an outage, so an outage alone never expires
//! anyone.

use std::collections::HashMap;

use hearth_store::{NodeRecord, NodeState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    epoch: i64,
    heartbeat_seq: i64,
    /// When this node first saw that (epoch, heartbeat), on its monotonic
    /// clock, ms.
    since_ms: u64,
}

/// What this node saw of the others.
#[derive(Debug, Clone)]
pub struct LeaseWatch {
    ttl_ms: u64,
    seen: HashMap<String, Seen>,
    last_look_ms: Option<u64>,
}

/// A node to expire, and how long it was seen silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silent {
    /// The node, as read (its `heartbeat_seq` guards the expiry).
    pub node: NodeRecord,
    /// How long its heartbeat stood still, ms.
    pub silent_ms: u64,
}

impl LeaseWatch {
    /// A watch that expires nodes silent for `ttl_ms`.
    pub fn new(ttl_ms: u64) -> Self {
        Self {
            ttl_ms,
            seen: HashMap::new(),
            last_look_ms: None,
        }
    }

    /// Take in `nodes` as read at `now_ms` (monotonic) by node `me`, and
    /// return the live ones that have been silent for a TTL.
    pub fn observe(&mut self, now_ms: u64, me: &str, nodes: &[NodeRecord]) -> Vec<Silent> {
        let blind = self
            .last_look_ms
            .is_some_and(|last| now_ms.saturating_sub(last) > self.ttl_ms / 2);
        if blind {
            // This node could not look for a while: what it saw before is
            // no evidence of silence.
            self.seen.clear();
        }
        self.last_look_ms = Some(now_ms);
        let alive: Vec<&NodeRecord> = nodes
            .iter()
            .filter(|n| n.state == NodeState::Alive && n.id != me)
            .collect();
        self.seen.retain(|id, _| alive.iter().any(|n| &n.id == id));
        let mut silent = Vec::new();
        for node in alive {
            let current = (node.epoch, node.heartbeat_seq);
            let seen = self.seen.entry(node.id.clone()).or_insert(Seen {
                epoch: node.epoch,
                heartbeat_seq: node.heartbeat_seq,
                since_ms: now_ms,
            });
            if (seen.epoch, seen.heartbeat_seq) != current {
                *seen = Seen {
                    epoch: node.epoch,
                    heartbeat_seq: node.heartbeat_seq,
                    since_ms: now_ms,
                };
                continue;
            }
            let quiet = now_ms.saturating_sub(seen.since_ms);
            if quiet >= self.ttl_ms {
                silent.push(Silent {
                    node: node.clone(),
                    silent_ms: quiet,
                });
            }
        }
        silent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_store::{NodeCapacity, NodeLoad};
    use proptest::prelude::*;

    fn node(id: &str, epoch: i64, seq: i64, state: NodeState) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            url: String::new(),
            hostname: String::new(),
            home: String::new(),
            epoch,
            state,
            started_ms: 0,
            heartbeat_ms: 0,
            heartbeat_seq: seq,
            lease_expires_ms: 0,
            capacity: NodeCapacity::default(),
            load: NodeLoad::default(),
        }
    }

    const TTL: u64 = 10_000;

    #[test]
    fn a_node_silent_for_a_ttl_is_expired_and_a_heartbeat_resets_the_count() {
        let mut watch = LeaseWatch::new(TTL);
        let mut now = 0;
        let look = |watch: &mut LeaseWatch, now: u64, seq: i64| {
            watch.observe(now, "me", &[node("a", 1, seq, NodeState::Alive)])
        };
        assert!(look(&mut watch, now, 5).is_empty());
        for _ in 0..4 {
            now += 2_000;
            assert!(look(&mut watch, now, 5).is_empty());
        }
        // A heartbeat at 8 s: counting starts again.
        now += 2_000;
        assert!(look(&mut watch, now, 6).is_empty());
        for _ in 0..4 {
            now += 2_000;
            assert!(look(&mut watch, now, 6).is_empty());
        }
        now += 2_000;
        let silent = look(&mut watch, now, 6);
        assert_eq!(silent.len(), 1);
        assert_eq!(silent[0].silent_ms, TTL);
        assert_eq!(silent[0].node.heartbeat_seq, 6);
    }

    #[test]
    fn an_outage_of_the_watcher_expires_nobody() {
        let mut watch = LeaseWatch::new(TTL);
        let nodes = [node("a", 1, 5, NodeState::Alive)];
        assert!(watch.observe(0, "me", &nodes).is_empty());
        // The database was down for a minute: nobody heartbeated.
        assert!(watch.observe(60_000, "me", &nodes).is_empty());
        assert!(watch.observe(62_000, "me", &nodes).is_empty());
        // Still silent a whole TTL after the watcher could look again.
        let mut now = 62_000;
        while now < 70_000 {
            now += 2_000;
            assert!(watch.observe(now, "me", &nodes).is_empty() || now >= 70_000);
        }
        assert_eq!(watch.observe(72_000, "me", &nodes).len(), 1);
    }

    #[test]
    fn itself_dead_nodes_and_new_epochs_are_not_expired() {
        let mut watch = LeaseWatch::new(TTL);
        let mut now = 0;
        let nodes = |epoch| {
            vec![
                node("me", 1, 0, NodeState::Alive),
                node("gone", 1, 0, NodeState::Left),
                node("b", epoch, 0, NodeState::Alive),
            ]
        };
        for _ in 0..5 {
            assert!(watch.observe(now, "me", &nodes(1)).is_empty());
            now += 2_000;
        }
        // b restarted with a new epoch (heartbeat count back to 0).
        assert!(watch.observe(now, "me", &nodes(2)).is_empty());
        now += 2_000;
        assert!(watch.observe(now, "me", &nodes(2)).is_empty());
    }

    proptest! {
        /// Whatever the looks and heartbeats, a node is never reported
        /// before the watcher saw its heartbeat stand still for a TTL of
        /// its own continuous looking.
        #[test]
        fn never_expires_before_a_watched_ttl_of_silence(
            gaps in proptest::collection::vec(1u64..8_000, 1..60),
            beats in proptest::collection::vec(any::<bool>(), 60),
        ) {
            let mut watch = LeaseWatch::new(TTL);
            let mut now = 0u64;
            let mut seq = 0i64;
            // When the watcher last saw the heartbeat move, or started
            // looking after being blind.
            let mut quiet_since = 0u64;
            let mut last = None::<u64>;
            for (i, gap) in gaps.iter().enumerate() {
                now += gap;
                if beats[i] {
                    seq += 1;
                }
                let blind = last.is_some_and(|l| now - l > TTL / 2);
                let silent = watch.observe(now, "me", &[node("a", 1, seq, NodeState::Alive)]);
                if beats[i] || blind || last.is_none() {
                    quiet_since = now;
                }
                last = Some(now);
                if !silent.is_empty() {
                    prop_assert!(now - quiet_since >= TTL, "expired after {} ms", now - quiet_since);
                } else {
                    prop_assert!(now - quiet_since < TTL);
                }
            }
        }
    }
}
