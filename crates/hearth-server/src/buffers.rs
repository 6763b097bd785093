//! One budget for the bytes the server holds on behalf of requests:
//! output collected for `?wait=true` execs and upload buffers. Every limit
//! on those is per request, so without a server-wide one enough concurrent
//! requests, each within its own limit, can take the server's memory (24
//! collected execs of 15 MB took it to 472 MB). A request that cannot get
//! room within a short wait is refused with 503 instead.
//!
//! Counted in KiB (a tokio semaphore counts permits in a `u32`-friendly
//! range that way), rounded up.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use hearth_proto::ByteSize;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a request waits for room before it is refused: long enough to
/// ride out a burst of answers being sent, short enough that a client is
/// not left hanging.
pub const ROOM_WAIT: Duration = Duration::from_secs(2);

/// The budget; cheap to clone. Zero bytes means no budget (every request
/// gets room).
#[derive(Debug, Clone)]
pub struct BufferBudget {
    total: ByteSize,
    room: Option<Arc<Semaphore>>,
}

/// Room held by one request; given back when dropped.
#[derive(Debug)]
pub struct BufferLease {
    total: ByteSize,
    room: Option<Arc<Semaphore>>,
    held: Option<OwnedSemaphorePermit>,
    bytes: u64,
}

fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

impl BufferBudget {
    /// A budget of `total` bytes (0: unlimited).
    pub fn new(total: ByteSize) -> Self {
        let room = (total.bytes() > 0).then(|| {
            let permits = (total.bytes() / 1024).min(Semaphore::MAX_PERMITS as u64) as usize;
            Arc::new(Semaphore::new(permits))
        });
        Self { total, room }
    }

    /// The budget's size.
    pub fn total(&self) -> ByteSize {
        self.total
    }

    /// Bytes free now (the total when unlimited).
    pub fn available(&self) -> u64 {
        match &self.room {
            Some(room) => room.available_permits() as u64 * 1024,
            None => self.total.bytes(),
        }
    }

    /// An empty lease, to grow as the request buffers.
    pub fn lease(&self) -> BufferLease {
        BufferLease {
            total: self.total,
            room: self.room.clone(),
            held: None,
            bytes: 0,
        }
    }
}

impl BufferLease {
    /// Bytes this lease holds room for.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The size of the budget it draws on.
    pub fn budget(&self) -> ByteSize {
        self.total
    }

    /// Hold room for `bytes` only (no more than it holds now), giving the
    /// rest back: a request whose buffers shrank.
    pub fn shrink_to(&mut self, bytes: u64) {
        if bytes >= self.bytes {
            return;
        }
        self.bytes = bytes;
        let keep = kib(bytes) as usize;
        if let Some(held) = &mut self.held {
            let extra = held.num_permits().saturating_sub(keep);
            if extra > 0 {
                drop(held.split(extra));
            }
        }
    }

    /// Hold room for `bytes` more, waiting up to `wait` for it; false (and
    /// nothing more held) when the budget has no room by then.
    pub async fn grow(&mut self, bytes: u64, wait: Duration) -> bool {
        let Some(room) = &self.room else {
            self.bytes += bytes;
            return true;
        };
        // Whole KiB are held: count what the lease covers in KiB too, so
        // many small chunks don't each round up.
        let have = self.held.as_ref().map_or(0, |p| p.num_permits() as u64);
        let need = u64::from(kib(self.bytes + bytes)).saturating_sub(have) as u32;
        if need > 0 {
            let permit = match room.clone().try_acquire_many_owned(need) {
                Ok(permit) => permit,
                Err(_) => {
                    match tokio::time::timeout(wait, room.clone().acquire_many_owned(need)).await {
                        Ok(Ok(permit)) => permit,
                        _ => return false,
                    }
                }
            };
            match &mut self.held {
                Some(held) => held.merge(permit),
                None => self.held = Some(permit),
            }
        }
        self.bytes += bytes;
        true
    }
}

/// 503 when the server's buffer budget has no room for a request.
pub(crate) fn no_room(what: &str, budget: ByteSize) -> crate::error::ApiError {
    crate::error::ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "server_busy",
        format!(
            "{what}: the server already holds as much collected output and upload data as its buffer budget allows ({budget}, --buffer-budget); retry shortly"
        ),
    )
}

/// An answer's body that holds `T` (room in the budget, a request
/// counted in flight) until it is sent or dropped.
pub(crate) struct HoldingBody<T> {
    inner: Body,
    _held: T,
}

impl<T> HoldingBody<T> {
    pub(crate) fn new(inner: Body, held: T) -> Self {
        Self { inner, _held: held }
    }
}

impl<T: Unpin> HttpBody for HoldingBody<T> {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leases_share_the_budget_and_give_it_back() {
        let budget = BufferBudget::new(ByteSize(100 * 1024));
        let mut a = budget.lease();
        assert!(a.grow(60 * 1024, Duration::ZERO).await);
        let mut b = budget.lease();
        assert!(!b.grow(50 * 1024, Duration::ZERO).await, "over the budget");
        assert_eq!(b.bytes(), 0, "a refused grow holds nothing");
        assert!(b.grow(40 * 1024, Duration::ZERO).await);
        assert_eq!(budget.available(), 0);
        drop(a);
        assert_eq!(budget.available(), 60 * 1024);
        assert!(b.grow(60 * 1024, Duration::ZERO).await);
    }

    #[tokio::test]
    async fn small_chunks_are_counted_exactly_not_rounded_each() {
        let budget = BufferBudget::new(ByteSize(10 * 1024));
        let mut lease = budget.lease();
        for _ in 0..100 {
            assert!(lease.grow(100, Duration::ZERO).await);
        }
        assert_eq!(lease.bytes(), 10_000);
        assert_eq!(
            budget.available(),
            10 * 1024 - 10 * 1024,
            "10 000 bytes hold 10 KiB"
        );
    }

    #[tokio::test]
    async fn a_waiting_request_gets_room_given_back_within_the_wait() {
        let budget = BufferBudget::new(ByteSize(8 * 1024));
        let mut a = budget.lease();
        assert!(a.grow(8 * 1024, Duration::ZERO).await);
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut b = budget.lease();
                b.grow(4 * 1024, Duration::from_secs(30)).await
            })
        };
        tokio::task::yield_now().await;
        drop(a);
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn a_shrunk_lease_gives_the_rest_back() {
        let budget = BufferBudget::new(ByteSize(100 * 1024));
        let mut lease = budget.lease();
        assert!(lease.grow(80 * 1024, Duration::ZERO).await);
        lease.shrink_to(30 * 1024);
        assert_eq!(lease.bytes(), 30 * 1024);
        assert_eq!(budget.available(), 70 * 1024);
        lease.shrink_to(50 * 1024);
        assert_eq!(lease.bytes(), 30 * 1024, "shrinking never grows");
        assert!(lease.grow(10 * 1024, Duration::ZERO).await);
        assert_eq!(budget.available(), 60 * 1024);
        drop(lease);
        assert_eq!(budget.available(), 100 * 1024);
    }

    #[tokio::test]
    async fn no_budget_means_room_for_everything() {
        let budget = BufferBudget::new(ByteSize(0));
        let mut lease = budget.lease();
        assert!(lease.grow(u64::MAX / 2, Duration::ZERO).await);
    }
}
