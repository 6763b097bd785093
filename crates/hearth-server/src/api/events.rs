//! The event log, of one sandbox, one run or the whole server, as JSON
//! pages or a live stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::header::ACCEPT;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::mpsc;

use hearth_store::{Event, Store, StoreError};

use super::model::{EventList, EventView, EventsQuery, LogStreamEvent};
use super::{last_event_id, ApiQuery, AppState};
use crate::error::{ApiError, ErrorResponse};
use crate::events::EventLog;

/// Events read from the store per query while catching up.
const PAGE: u32 = 500;

/// A sandbox's events, oldest first. With `Accept: text/event-stream`, a
/// live stream: the history after `Last-Event-ID` (or `?after=`), then
/// each new event as it is recorded, ending after the sandbox's final
/// event. Event ids are the events' `seq`.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/events",
    tag = "events",
    params(("id" = String, Path, description = "Sandbox id"), EventsQuery),
    responses(
        (status = 200, description = "A page of history, or the live stream with Accept: text/event-stream", content((EventList = "application/json"), (LogStreamEvent = "text/event-stream"))),
        (status = 400, description = "A field is invalid", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 404, description = "Not found", body = ErrorResponse),
    )
)]
pub async fn sandbox_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    // 404 for an unknown sandbox, rather than an empty history.
    state.manager.record(&id).await?;
    events_response(&state, Some(id), &headers, query).await
}

/// Every event of the server, oldest first: all sandboxes' events and the
/// server's own (`admission.refused`). With `Accept: text/event-stream`, a
/// live stream that resumes after `Last-Event-ID` and does not end.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(EventsQuery),
    responses(
        (status = 200, description = "A page of history, or the live stream with Accept: text/event-stream", content((EventList = "application/json"), (LogStreamEvent = "text/event-stream"))),
        (status = 400, description = "A field is invalid", body = ErrorResponse),
        (status = 401, description = "No valid token", body = ErrorResponse),
    )
)]
pub async fn server_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    events_response(&state, None, &headers, query).await
}

async fn events_response(
    state: &AppState,
    sandbox: Option<String>,
    headers: &HeaderMap,
    query: EventsQuery,
) -> Result<Response, ApiError> {
    let after = resume_after(headers, query.after)?;
    if !wants_stream(headers) {
        let limit = query.limit.unwrap_or(1000);
        if limit == 0 {
            return Err(ApiError::invalid("limit", "limit must be at least 1"));
        }
        let events = state
            .events
            .store()
            .events(sandbox.as_deref(), after, limit)
            .await?;
        let next_after = events.last().map(|e| e.seq).unwrap_or(after);
        let events = events.into_iter().map(EventView::from).collect();
        return Ok(Json(EventList { events, next_after }).into_response());
    }
    let feed = match sandbox {
        Some(id) => Feed::Sandbox(id),
        None => Feed::All,
    };
    Ok(stream(state.events.clone(), feed, after))
}

/// Where a history resumes: after `Last-Event-ID`, else after `?after=`.
pub(super) fn resume_after(headers: &HeaderMap, after: Option<i64>) -> Result<i64, ApiError> {
    Ok(match last_event_id(headers)? {
        Some(seq) => seq,
        None => after.unwrap_or(0).max(0),
    })
}

/// Whether the client asked for a live stream rather than a page.
pub(super) fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// Whose events a live stream carries.
pub(super) enum Feed {
    /// Every event of the server; never ends.
    All,
    /// One sandbox's; ends after its final event.
    Sandbox(String),
    /// One durable run's; ends once the run has ended for good and its
    /// last launch's `run.exited` is in.
    Run(String),
}

impl Feed {
    async fn page(&self, store: &Store, after: i64) -> Result<Vec<Event>, StoreError> {
        match self {
            Self::All => store.events(None, after, PAGE).await,
            Self::Sandbox(id) => store.events(Some(id), after, PAGE).await,
            Self::Run(id) => store.run_events(id, after, PAGE).await,
        }
    }

    fn is_last(&self, event: &Event) -> bool {
        match self {
            Self::All | Self::Run(_) => false,
            Self::Sandbox(_) => event.ends_sandbox(),
        }
    }

    /// Whether the subject has ended, so nothing more will follow: a
    /// sandbox in a final state; a run in a final state whose last launch's
    /// exit is in (`tail`), or that ended more than [`EXIT_GRACE`] ago
    /// (`ended`: when this stream first saw it ended).
    async fn has_ended(
        &self,
        store: &Store,
        tail: &mut RunTail,
        ended: &mut Option<tokio::time::Instant>,
    ) -> Result<bool, StoreError> {
        match self {
            Self::All => Ok(false),
            Self::Sandbox(id) => Ok(store.sandbox(id).await?.is_some_and(|r| r.state.is_final())),
            Self::Run(id) => Ok(match store.run(id).await? {
                Some(run) if run.state.is_final() => {
                    if !tail.done(run.launches) && !tail.caught_up {
                        // A stream resumed past the run's end never saw
                        // it: take in the events before where it began,
                        // once, rather than wait out the grace.
                        tail.caught_up = true;
                        let mut after = 0;
                        loop {
                            let page = store.run_events(id, after, PAGE).await?;
                            page.iter().for_each(|e| tail.observe(e));
                            match page.last() {
                                Some(last) if page.len() == PAGE as usize => after = last.seq,
                                _ => break,
                            }
                        }
                    }
                    let since = *ended.get_or_insert_with(tokio::time::Instant::now);
                    tail.done(run.launches) || since.elapsed() >= EXIT_GRACE
                }
                _ => false,
            }),
        }
    }
}

/// Longest a run's stream waits, once the run has ended, for its last
/// launch's `run.exited` (the program may still be exiting when the run
/// completes).
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// What a run's stream has seen of the run's end: whether it ended, and
/// the last launch whose exit it carried.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct RunTail {
    ended: bool,
    exited: u64,
    /// Whether the run's events before the stream's start were taken in.
    caught_up: bool,
}

impl RunTail {
    /// Take in an event of the run.
    fn observe(&mut self, event: &Event) {
        if event.kind == "run.exited" {
            let launch = event.data["launch"].as_u64().unwrap_or(0);
            self.exited = self.exited.max(launch);
        }
        if event.ends_run() {
            self.ended = true;
        }
    }

    /// Whether nothing follows: the run ended and the last of its
    /// `launches` has exited (none: nothing to wait for).
    fn done(&self, launches: u32) -> bool {
        self.ended && (launches == 0 || self.exited >= u64::from(launches))
    }
}

/// The SSE response for `feed` from `after` on; event ids are the events'
/// `seq`.
pub(super) fn stream(log: EventLog, feed: Feed, after: i64) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(follow(log, feed, after, tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        Some((Ok::<_, Infallible>(to_sse(event)), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn to_sse(event: Event) -> SseEvent {
    let kind = event.kind.clone();
    let seq = event.seq;
    let data = serde_json::to_string(&EventView::from(event)).unwrap_or_default();
    SseEvent::default()
        .id(seq.to_string())
        .event(kind)
        .data(data)
}

/// Send `feed`'s events after `after` to `tx`, always read from the store
/// after the last one sent (exact with any number of writers): at once,
/// then whenever this process appends one, and every poll interval for
/// those other nodes append. Ends after the subject's final event, or when
/// the client goes away. While the store is unavailable it keeps trying,
/// so the stream resumes when the store is back.
async fn follow(log: EventLog, feed: Feed, mut after: i64, tx: mpsc::Sender<Event>) {
    // Subscribe before the first read so that nothing appended between the
    // read and the wait is missed.
    let mut appended = log.subscribe();
    let mut poll = tokio::time::interval(log.poll_interval());
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let store = log.store();
    let mut tail = RunTail::default();
    let mut ended = None;
    loop {
        appended.borrow_and_update();
        let page = match feed.page(store, after).await {
            Ok(page) => page,
            Err(error) if error.is_unavailable() => {
                tracing::warn!(%error, "reading events for a stream; retrying");
                Vec::new()
            }
            Err(error) => {
                tracing::error!(%error, "reading events for a stream");
                return;
            }
        };
        let full = page.len() == PAGE as usize;
        for event in page {
            after = event.seq;
            tail.observe(&event);
            let last = feed.is_last(&event);
            if tx.send(event).await.is_err() || last {
                return;
            }
        }
        if full {
            continue;
        }
        // Resumed after the end: there is nothing more to wait for.
        match feed.has_ended(store, &mut tail, &mut ended).await {
            Ok(true) => {
                // Its final event may have been appended after the read
                // above: read once more before ending.
                if let Ok(rest) = feed.page(store, after).await {
                    for event in rest {
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                }
                return;
            }
            Ok(false) => {}
            Err(error) if error.is_unavailable() => {}
            Err(error) => {
                tracing::error!(%error, "reading a stream's subject");
                return;
            }
        }
        tokio::select! {
            changed = appended.changed() => if changed.is_err() { return },
            _ = poll.tick() => {}
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: &str, data: serde_json::Value) -> Event {
        Event {
            seq: 1,
            sandbox_id: None,
            run_id: Some("run-a".into()),
            node_id: None,
            at_ms: 0,
            kind: kind.into(),
            version: 1,
            data,
        }
    }

    #[test]
    fn a_run_stream_waits_for_its_last_launch_to_exit() {
        let mut tail = RunTail::default();
        tail.observe(&event("run.exited", json!({"launch": 1})));
        assert!(!tail.done(2), "the run has not ended");
        tail.observe(&event("run.completed", json!({})));
        assert!(!tail.done(2), "launch 2 is still exiting");
        tail.observe(&event("run.exited", json!({"launch": 2})));
        assert!(tail.done(2));

        // Ended while waiting: its last launch had exited before.
        let mut waited = RunTail::default();
        waited.observe(&event("run.exited", json!({"launch": 1})));
        waited.observe(&event("run.cancelled", json!({})));
        assert!(waited.done(1));
        // Never launched.
        let mut never = RunTail::default();
        never.observe(&event("run.failed", json!({})));
        assert!(never.done(0) && !never.done(1));
    }
}
