//! One id per request, so that what a client was told and what the server
//! logged can be matched: every answer carries it in `x-request-id`, every
//! error body in `request_id`, and every log line of the request in its
//! span. An error's detail that must not reach clients (host paths, raw
//! database errors) is logged under that id instead.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header that carries the id, both ways.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static REQUEST_ID: Arc<str>;
}

/// The id of the request being answered, if any.
pub fn current() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}

/// A caller's own id, when it is one we can log and echo as is (a node
/// forwarding a request keeps its id); otherwise a new one.
fn id_for(request: &Request) -> Arc<str> {
    request
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(Arc::from)
        .unwrap_or_else(|| format!("req-{}", hearth_sandbox::ids::random_hex(8)).into())
}

/// 1 to 64 letters, digits, `-`, `_` or `.`.
fn acceptable(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Middleware: give the request its id, for its span, its errors and its
/// answer.
pub async fn assign(request: Request, next: Next) -> Response {
    let id = id_for(&request);
    let span = tracing::info_span!("request", id = %id);
    let mut response = REQUEST_ID
        .scope(id.clone(), next.run(request))
        .instrument(span)
        .await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_short_ids_are_taken_from_callers() {
        assert!(acceptable("req-0123abcd"));
        assert!(acceptable("a.b_c-D9"));
        assert!(!acceptable(""));
        assert!(!acceptable(&"a".repeat(65)));
        assert!(!acceptable("two words"));
        assert!(!acceptable("line\nbreak"));
        assert!(!acceptable("ünï"));
    }
}
