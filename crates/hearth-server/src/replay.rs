//! The output buffer of one exec: numbered items that clients read from
//! any position, bounded in size without losing what an attached client
//! has not read yet.
//!
//! Pure bookkeeping, no I/O or locking: [`crate::execs`] wraps it in a
//! mutex and wakes readers and the pump.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use hearth_proto::ExitReport;

/// One item of an exec's output stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecItem {
    /// The process started with this guest PID.
    Started(u32),
    /// Bytes on stdout.
    Stdout(Bytes),
    /// Bytes on stderr.
    Stderr(Bytes),
    /// How it ended: always the last item, or [`ExecItem::Failed`] is.
    Exit(ExitReport),
    /// The exec could not finish normally (the sandbox ended under it).
    Failed {
        /// Error class.
        code: String,
        /// What happened.
        message: String,
    },
    /// Output between the client's position and this item was dropped
    /// (the client was away and the replay buffer overflowed).
    Gap {
        /// How many items were dropped.
        missed: u64,
    },
}

impl ExecItem {
    /// Bytes of output it carries.
    pub fn size(&self) -> usize {
        match self {
            Self::Stdout(b) | Self::Stderr(b) => b.len(),
            _ => 0,
        }
    }

    /// Whether it is output (the only items ever dropped).
    pub fn is_output(&self) -> bool {
        matches!(self, Self::Stdout(_) | Self::Stderr(_))
    }
}

/// Where an exec is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecStatus {
    /// Still running.
    Running,
    /// Ended with this report.
    Exited(ExitReport),
    /// Ended without a report.
    Failed(String),
}

/// What a reader gets next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextItem {
    /// The item with this sequence number.
    Item(u64, ExecItem),
    /// Nothing yet; wait for more.
    Pending,
    /// The exec ended and the reader has seen everything.
    End,
}

/// Numbered items (from 1), the readers' positions, and the exec's status.
#[derive(Debug)]
pub struct ReplayBuffer {
    items: VecDeque<(u64, ExecItem)>,
    next_seq: u64,
    bytes: usize,
    capacity: usize,
    status: ExecStatus,
    /// Each attached reader's next wanted sequence number.
    cursors: HashMap<u64, u64>,
    next_reader: u64,
}

impl ReplayBuffer {
    /// An empty buffer keeping up to `capacity` bytes of output for readers
    /// that are not attached.
    pub fn new(capacity: usize) -> Self {
        Self {
            items: VecDeque::new(),
            next_seq: 1,
            bytes: 0,
            capacity,
            status: ExecStatus::Running,
            cursors: HashMap::new(),
            next_reader: 0,
        }
    }

    /// The exec's status.
    pub fn status(&self) -> &ExecStatus {
        &self.status
    }

    /// Readers attached now.
    pub fn attached(&self) -> usize {
        self.cursors.len()
    }

    /// Output bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Attach a reader that wants every item after sequence `after`;
    /// returns its id.
    pub fn attach(&mut self, after: u64) -> u64 {
        let id = self.next_reader;
        self.next_reader += 1;
        self.cursors.insert(id, after + 1);
        id
    }

    /// Detach a reader.
    pub fn detach(&mut self, reader: u64) {
        self.cursors.remove(&reader);
    }

    fn oldest_wanted(&self) -> u64 {
        self.cursors.values().copied().min().unwrap_or(u64::MAX)
    }

    /// Whether adding `size` bytes of output must wait: it would go past
    /// the capacity while an attached reader still needs the oldest output.
    pub fn must_wait_for_room(&self, size: usize) -> bool {
        if self.bytes + size <= self.capacity || self.cursors.is_empty() {
            return false;
        }
        let oldest_wanted = self.oldest_wanted();
        let freeable: usize = self
            .items
            .iter()
            .filter(|(s, item)| item.is_output() && *s < oldest_wanted)
            .map(|(_, item)| item.size())
            .sum();
        self.bytes - freeable + size > self.capacity
    }

    /// Append an item, then drop the oldest output no attached reader
    /// still needs until the held output fits the capacity.
    pub fn push(&mut self, item: ExecItem) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += item.size();
        self.items.push_back((seq, item));
        let oldest_wanted = self.oldest_wanted();
        while self.bytes > self.capacity {
            let Some(pos) = self
                .items
                .iter()
                .position(|(s, item)| item.is_output() && *s < oldest_wanted)
            else {
                break;
            };
            let (_, removed) = self.items.remove(pos).expect("position is valid");
            self.bytes -= removed.size();
        }
    }

    /// Append the last item for `status` (exit or error) and mark the exec
    /// ended, in one step, so a reader never sees the end without it.
    pub fn finish(&mut self, status: ExecStatus) {
        let last = match &status {
            ExecStatus::Exited(report) => ExecItem::Exit(report.clone()),
            ExecStatus::Failed(message) => ExecItem::Failed {
                code: "exec_failed".into(),
                message: message.clone(),
            },
            ExecStatus::Running => return,
        };
        self.push(last);
        self.status = status;
    }

    /// The next item for `reader`, advancing it. A reader whose position
    /// was dropped gets a [`ExecItem::Gap`] first.
    pub fn next_for(&mut self, reader: u64) -> NextItem {
        let cursor = self.cursors.get(&reader).copied().unwrap_or(1);
        let found = self
            .items
            .iter()
            .find(|(seq, _)| *seq >= cursor)
            .map(|(seq, item)| (*seq, item.clone()));
        match found {
            Some((seq, _)) if seq > cursor => {
                self.cursors.insert(reader, seq);
                NextItem::Item(
                    seq - 1,
                    ExecItem::Gap {
                        missed: seq - cursor,
                    },
                )
            }
            Some((seq, item)) => {
                self.cursors.insert(reader, seq + 1);
                NextItem::Item(seq, item)
            }
            None if matches!(self.status, ExecStatus::Running) => NextItem::Pending,
            None => NextItem::End,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exit() -> ExitReport {
        ExitReport {
            reason: hearth_proto::ExitReason::Exited,
            code: 0,
            signal: None,
            message: None,
            duration_ms: 1,
            stdout_bytes: 0,
            stderr_bytes: 0,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// The pump offers this many bytes of stdout (it waits, i.e. skips,
        /// when there is no room).
        Output(usize),
        /// Reader `n % readers` reads up to this many items.
        Read(usize, usize),
        /// A late reader attaches from the start.
        Attach,
        /// Reader `n % readers` (not the first) leaves.
        Detach(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1usize..400).prop_map(Op::Output),
            (0usize..4, 1usize..6).prop_map(|(r, n)| Op::Read(r, n)),
            Just(Op::Attach),
            (1usize..4).prop_map(Op::Detach),
        ]
    }

    proptest! {
        /// A reader attached from the start, with a pump that waits for
        /// room, gets every item once, in order, with no gap; the buffer
        /// never holds more than its capacity plus one item; late readers
        /// see increasing sequence numbers and a gap exactly when output
        /// they wanted was dropped.
        #[test]
        fn attached_readers_lose_nothing(ops in proptest::collection::vec(op(), 1..120)) {
            let capacity = 1000;
            let mut buffer = ReplayBuffer::new(capacity);
            let first = buffer.attach(0);
            let mut readers = vec![(first, 0u64, Vec::<u64>::new())];
            let mut pushed: Vec<(u64, usize)> = Vec::new();
            buffer.push(ExecItem::Started(1));
            pushed.push((1, 0));
            let read = |buffer: &mut ReplayBuffer, reader: &mut (u64, u64, Vec<u64>), n: usize| {
                for _ in 0..n {
                    match buffer.next_for(reader.0) {
                        NextItem::Item(seq, item) => {
                            assert!(seq >= reader.1, "sequence went back");
                            if matches!(item, ExecItem::Gap { .. }) {
                                reader.2.push(u64::MAX);
                            } else {
                                reader.2.push(seq);
                            }
                            reader.1 = seq + 1;
                        }
                        NextItem::Pending | NextItem::End => break,
                    }
                }
            };
            for op in ops {
                match op {
                    Op::Output(size) => {
                        if buffer.must_wait_for_room(size) {
                            // The pump waits; the first reader catches up.
                            let mut first = readers[0].clone();
                            read(&mut buffer, &mut first, usize::MAX);
                            readers[0] = first;
                            prop_assert!(!buffer.must_wait_for_room(size) || buffer.attached() > 1);
                            if buffer.must_wait_for_room(size) {
                                continue;
                            }
                        }
                        buffer.push(ExecItem::Stdout(Bytes::from(vec![b'x'; size])));
                        pushed.push((pushed.len() as u64 + 1, size));
                        prop_assert!(buffer.bytes() <= capacity + size);
                    }
                    Op::Read(r, n) => {
                        let i = r % readers.len();
                        let mut reader = readers[i].clone();
                        read(&mut buffer, &mut reader, n);
                        readers[i] = reader;
                    }
                    Op::Attach => {
                        let id = buffer.attach(0);
                        readers.push((id, 0, Vec::new()));
                    }
                    Op::Detach(r) => {
                        if readers.len() > 1 {
                            let i = 1 + r % (readers.len() - 1);
                            let (id, _, _) = readers.remove(i);
                            buffer.detach(id);
                        }
                    }
                }
            }
            buffer.finish(ExecStatus::Exited(exit()));
            let total = pushed.len() as u64 + 1;
            for reader in readers.iter_mut() {
                read(&mut buffer, reader, usize::MAX);
                prop_assert_eq!(buffer.next_for(reader.0), NextItem::End);
            }
            let expected: Vec<u64> = (1..=total).collect();
            prop_assert_eq!(&readers[0].2, &expected, "the first reader missed or repeated items");
            for (_, _, seen) in &readers[1..] {
                // Late readers: everything they did not get as a gap, in order.
                let real: Vec<u64> = seen.iter().copied().filter(|s| *s != u64::MAX).collect();
                prop_assert!(real.windows(2).all(|w| w[0] < w[1]));
                prop_assert_eq!(real.last().copied(), Some(total), "the exit is never dropped");
            }
        }
    }

    #[test]
    fn a_reader_resuming_after_dropped_output_gets_a_gap() {
        let mut buffer = ReplayBuffer::new(10);
        for _ in 0..5 {
            buffer.push(ExecItem::Stdout(Bytes::from_static(b"12345")));
        }
        buffer.finish(ExecStatus::Exited(exit()));
        // Only the last two chunks fit; items 1-3 are gone.
        let reader = buffer.attach(0);
        assert_eq!(
            buffer.next_for(reader),
            NextItem::Item(3, ExecItem::Gap { missed: 3 })
        );
        assert!(matches!(
            buffer.next_for(reader),
            NextItem::Item(4, ExecItem::Stdout(_))
        ));
        assert!(matches!(
            buffer.next_for(reader),
            NextItem::Item(5, ExecItem::Stdout(_))
        ));
        assert!(matches!(
            buffer.next_for(reader),
            NextItem::Item(6, ExecItem::Exit(_))
        ));
        assert_eq!(buffer.next_for(reader), NextItem::End);
        // Resuming after the exit: nothing more.
        let late = buffer.attach(6);
        assert_eq!(buffer.next_for(late), NextItem::End);
    }
}
