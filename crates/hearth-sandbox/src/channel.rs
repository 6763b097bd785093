//! Keeping the host channel: when the HTTP/2 connection to the guest agent
//! breaks while the VM runs, reconnect; when that fails, or the channel
//! keeps breaking, end the sandbox `guest_channel_lost`.
//!
//! A connection breaks when the guest writes garbage into its end of the
//! channel (root in the guest can take the agent's port descriptor), or when
//! the stream fails for any other reason. Without a keeper, every later call
//! failed with "guest connection lost" while the sandbox still counted as
//! running and held its admission slot. The keeper reconnects through the
//! channel handshake ([`hearth_proto::handshake`], which skips the stale
//! bytes), and the agent serves the new connection with its state intact
//! (clock, hostname and limits from the boot's hello, running processes),
//! so no new hello is sent. Calls in flight at the break fail; calls made
//! while the keeper reconnects wait for the new connection
//! ([`ClientSlot::live`]); later calls use it.
//!
//! Two bounds keep a hostile guest from making the host spin: reconnecting
//! must succeed within [`RECONNECT_WITHIN`], and at most
//! [`MAX_RECONNECTS`] reconnects happen per [`RECONNECT_WINDOW`]
//! ([`ReconnectBudget`]); past either, the sandbox ends.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use hearth_vm::Vm;

use crate::client::GuestClient;
use crate::end::{human_duration, EndReason};
use crate::error::{Result, SandboxError};
use crate::lifecycle::{request_end, wait_end, Shared};

/// How long reconnecting after a break may take before the sandbox ends.
pub const RECONNECT_WITHIN: Duration = Duration::from_secs(10);

/// Most connection attempts per reconnect (each bounded by what is left of
/// [`RECONNECT_WITHIN`]).
pub const RECONNECT_TRIES: u32 = 4;

/// Most reconnects within one [`RECONNECT_WINDOW`]; the next break ends the
/// sandbox.
pub const MAX_RECONNECTS: usize = 5;

/// The window over which [`MAX_RECONNECTS`] counts.
pub const RECONNECT_WINDOW: Duration = Duration::from_secs(60);

/// Pause between two failed connection attempts of one reconnect.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The sandbox's current connection to its guest agent, replaced by the
/// keeper after a reconnect. Handing out a clone is cheap (a few reference
/// counts) and the lock is held only for that. A call that finds the
/// connection broken waits for the keeper's next one instead of failing.
pub(crate) struct ClientSlot {
    client: Mutex<GuestClient>,
    /// Bumped when the keeper replaces the connection or gives up.
    changes: tokio::sync::watch::Sender<u64>,
    /// The keeper stopped: no new connection will come.
    settled: std::sync::atomic::AtomicBool,
}

impl ClientSlot {
    pub(crate) fn new(client: GuestClient) -> Self {
        Self {
            client: Mutex::new(client),
            changes: tokio::sync::watch::channel(0).0,
            settled: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The current connection.
    pub(crate) fn get(&self) -> GuestClient {
        self.client.lock().clone()
    }

    /// A connection to use: the current one if it is open; if it broke,
    /// the keeper's next one, waited for up to [`RECONNECT_WITHIN`]. (If
    /// none comes, the broken one: the call fails as before, and the
    /// sandbox's end, if any, says why.)
    pub(crate) async fn live(&self) -> GuestClient {
        let deadline = Instant::now() + RECONNECT_WITHIN;
        let mut changes = self.changes.subscribe();
        loop {
            changes.borrow_and_update();
            let client = self.get();
            if client.is_open() || self.settled.load(Ordering::SeqCst) {
                return client;
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return client;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return client,
            }
        }
    }

    fn replace(&self, client: GuestClient) {
        *self.client.lock() = client;
        self.changes.send_modify(|n| *n += 1);
    }

    /// The keeper stops: callers waiting for a connection stop waiting.
    fn settle(&self) {
        self.settled.store(true, Ordering::SeqCst);
        self.changes.send_modify(|n| *n += 1);
    }
}

/// How many reconnects the channel may still make: at most `max` within any
/// `window`. A pure function of the times it is given, so it is tested
/// without sleeping.
#[derive(Debug)]
pub struct ReconnectBudget {
    max: usize,
    window: Duration,
    /// When the reconnects within the window were allowed, oldest first.
    recent: VecDeque<Instant>,
}

impl ReconnectBudget {
    /// A budget of `max` reconnects per `window`.
    pub fn new(max: usize, window: Duration) -> Self {
        Self {
            max,
            window,
            recent: VecDeque::with_capacity(max),
        }
    }

    /// Whether a reconnect at `now` is within the budget; if so it is
    /// counted. Times must not go backwards.
    pub fn try_take(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|&at| now.saturating_duration_since(at) >= self.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

/// Whether the sandbox is ending anyway (the host asked, or the VM exited):
/// a connection that closes then is no broken channel.
fn ending(vm: &dyn Vm, shared: &Shared) -> bool {
    shared.requested_end.lock().is_some()
        || vm.try_exit().is_some()
        || shared.end.borrow().is_some()
}

/// End the sandbox because its channel is lost, unless it is ending anyway.
fn lose(vm: &dyn Vm, shared: &Shared, message: String) {
    if ending(vm, shared) {
        return;
    }
    tracing::warn!(%message, "ending the sandbox: its host channel is lost");
    request_end(shared, EndReason::GuestChannelLost, &message);
    vm.kill();
}

/// Open a new connection to the guest agent: up to [`RECONNECT_TRIES`]
/// attempts within [`RECONNECT_WITHIN`].
async fn reconnect(vm: &dyn Vm) -> Result<GuestClient> {
    let deadline = Instant::now() + RECONNECT_WITHIN;
    let mut last = None;
    for attempt in 1..=RECONNECT_TRIES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let connect = async {
            let stream = vm.connect().await?;
            GuestClient::connect(stream).await
        };
        match tokio::time::timeout(left, connect).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(error)) => {
                tracing::debug!(attempt, %error, "reconnecting the host channel failed");
                last = Some(error.to_string());
            }
            Err(_) => {
                last = Some("the guest agent did not answer the channel handshake".into());
                break;
            }
        }
        if attempt < RECONNECT_TRIES {
            tokio::time::sleep(RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now())))
                .await;
        }
    }
    Err(SandboxError::Protocol(
        last.unwrap_or_else(|| "no time was left to reconnect".into()),
    ))
}

/// Watch the sandbox's connection; reconnect when it breaks; end the
/// sandbox `guest_channel_lost` when it cannot be kept. Returns once the
/// sandbox ends (or is ending), so it holds the VM no longer than the
/// monitor does.
pub(crate) async fn keep_channel(vm: Arc<dyn Vm>, shared: Arc<Shared>, slot: Arc<ClientSlot>) {
    keep(vm, shared, &slot).await;
    slot.settle();
}

async fn keep(vm: Arc<dyn Vm>, shared: Arc<Shared>, slot: &ClientSlot) {
    let mut budget = ReconnectBudget::new(MAX_RECONNECTS, RECONNECT_WINDOW);
    let mut end_rx = shared.end.subscribe();
    loop {
        let closed = slot.get().closed();
        let why = tokio::select! {
            why = closed.wait() => why,
            _ = wait_end(&mut end_rx) => return,
        };
        if ending(vm.as_ref(), &shared) {
            return;
        }
        if !budget.try_take(Instant::now()) {
            lose(
                vm.as_ref(),
                &shared,
                format!(
                    "the host channel to the guest agent broke again after {MAX_RECONNECTS} \
                     reconnects within {} (last: {why}); something in the guest keeps \
                     corrupting the channel, so the sandbox was ended",
                    human_duration(RECONNECT_WINDOW)
                ),
            );
            return;
        }
        tracing::warn!(error = %why, "the host channel to the guest agent broke; reconnecting");
        let outcome = tokio::select! {
            outcome = reconnect(vm.as_ref()) => outcome,
            // A VM that died closes its channel too: the monitor reports
            // that end.
            _ = vm.wait() => return,
            _ = wait_end(&mut end_rx) => return,
        };
        match outcome {
            Ok(client) => {
                slot.replace(client);
                let reconnects = shared.channel_reconnects.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    reconnects,
                    "reconnected the host channel to the guest agent; calls in flight at the break failed"
                );
            }
            Err(error) => {
                lose(
                    vm.as_ref(),
                    &shared,
                    format!(
                        "the host channel to the guest agent broke ({why}) and reconnecting \
                         failed within {} ({error}); the sandbox was ended",
                        human_duration(RECONNECT_WITHIN)
                    ),
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, secs: u64) -> Instant {
        base + Duration::from_secs(secs)
    }

    #[test]
    fn the_budget_allows_max_reconnects_per_window() {
        let base = Instant::now();
        let mut budget = ReconnectBudget::new(3, Duration::from_secs(60));
        assert!(budget.try_take(at(base, 0)));
        assert!(budget.try_take(at(base, 1)));
        assert!(budget.try_take(at(base, 2)));
        // A fourth within the minute is refused, and a refusal is not
        // counted.
        assert!(!budget.try_take(at(base, 3)));
        assert!(!budget.try_take(at(base, 59)));
        // Once the first has left the window, one more fits.
        assert!(budget.try_take(at(base, 60)));
        assert!(!budget.try_take(at(base, 60)));
        assert!(budget.try_take(at(base, 61)));
        assert!(budget.try_take(at(base, 62)));
        assert!(!budget.try_take(at(base, 119)));
    }

    #[test]
    fn occasional_breaks_never_exhaust_the_budget() {
        let base = Instant::now();
        let mut budget = ReconnectBudget::new(MAX_RECONNECTS, RECONNECT_WINDOW);
        // One break every 13 s, for a day.
        for n in 0..(24 * 3600 / 13) {
            assert!(budget.try_take(at(base, n * 13)), "break {n}");
        }
    }

    #[test]
    fn a_burst_is_stopped_at_the_limit() {
        let base = Instant::now();
        let mut budget = ReconnectBudget::new(MAX_RECONNECTS, RECONNECT_WINDOW);
        let allowed = (0..100)
            .take_while(|n| budget.try_take(base + Duration::from_millis(n * 10)))
            .count();
        assert_eq!(allowed, MAX_RECONNECTS);
    }

    #[test]
    fn a_zero_budget_allows_nothing() {
        let mut budget = ReconnectBudget::new(0, RECONNECT_WINDOW);
        assert!(!budget.try_take(Instant::now()));
    }
}
