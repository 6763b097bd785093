//! Any node answers any request: one about a sandbox whose VM runs on
//! another node is passed to that node, bodies and answers streamed both
//! ways (uploads, downloads, server-sent events), and creates are placed on
//! the node with the most room.
//!
//! A forwarded request carries the client's own `Authorization` header (all
//! nodes of a cluster accept the same token, `--token-file`), and
//! [`FORWARDED_BY`] naming the node that passed it on: a request that
//! already went through one node is answered where it lands, never passed
//! on again, so a stale view of who owns what cannot make requests loop.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;

use hearth_store::{NodeRecord, NodeState};

use crate::admission::VM_OVERHEAD;
use crate::error::ApiError;

/// Header naming the node that forwarded a request.
pub const FORWARDED_BY: &str = "x-hearth-forwarded-by";

/// Headers that describe one connection, not the message: never passed on.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Passes requests on to other nodes. Cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    http: reqwest::Client,
    node_id: HeaderValue,
}

impl Forwarder {
    /// A forwarder for node `node_id`.
    pub fn new(node_id: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // No overall timeout: streams last as long as the client stays.
            // Under the other node's header timeout (20 s by default),
            // which closes a kept-alive connection idle that long: reuse
            // only connections it still keeps.
            .pool_idle_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            http,
            node_id: HeaderValue::from_str(node_id)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
        }
    }

    /// Send `method path` with `headers` and `body` to `node`, and stream
    /// its answer back. `what` says what the request is about, for the
    /// error when the node does not answer.
    pub async fn forward(
        &self,
        node: &NodeRecord,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Body,
        what: &str,
    ) -> Response {
        let url = format!("{}{}", node.url.trim_end_matches('/'), path_and_query);
        let mut request = self.http.request(method, &url);
        for (name, value) in headers {
            if !is_hop_by_hop(name) && name.as_str() != FORWARDED_BY {
                request = request.header(name, value);
            }
        }
        request = request
            .header(FORWARDED_BY, self.node_id.clone())
            .body(reqwest::Body::wrap_stream(body.into_data_stream()));
        let answer = match request.send().await {
            Ok(answer) => answer,
            Err(error) => {
                return ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "node_unreachable",
                    format!(
                        "{what} is on node {} at {}, which did not answer: {error}; retry, or wait for the node to come back or be recorded dead",
                        node.id, node.url
                    ),
                )
                .into_response()
            }
        };
        let mut response = Response::builder().status(answer.status().as_u16());
        if let Some(out) = response.headers_mut() {
            for (name, value) in answer.headers() {
                if !is_hop_by_hop(name) {
                    out.append(name.clone(), value.clone());
                }
            }
        }
        let stream = answer.bytes_stream().map_err(std::io::Error::other);
        response
            .body(Body::from_stream(stream))
            .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response())
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// The sandbox id a path is about, for `/v1/sandboxes/{id}` and everything
/// under it.
pub fn sandbox_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/sandboxes/")?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then_some(id)
}

/// Whether any node answers this request from the store (the record and
/// the event log), so it need not go to the owner.
pub fn answered_anywhere(method: &Method, path: &str) -> bool {
    if method != Method::GET {
        return false;
    }
    let Some(id) = sandbox_of(path) else {
        return true;
    };
    let rest = &path["/v1/sandboxes/".len() + id.len()..];
    rest.is_empty() || rest == "/" || rest == "/events"
}

/// Why a node cannot take a sandbox, by its last reported load; `None` when
/// it can.
fn no_room(node: &NodeRecord, memory_bytes: u64, vcpus: u32) -> Option<String> {
    let (cap, load) = (node.capacity, node.load);
    if load.sandboxes >= cap.sandboxes {
        return Some(format!(
            "{}: sandboxes ({} of {} run)",
            node.id, load.sandboxes, cap.sandboxes
        ));
    }
    if load.memory_bytes.saturating_add(memory_bytes) > cap.memory_bytes {
        return Some(format!(
            "{}: memory ({} MiB free, {} MiB needed)",
            node.id,
            cap.memory_bytes.saturating_sub(load.memory_bytes) >> 20,
            memory_bytes >> 20
        ));
    }
    if load.vcpus.saturating_add(vcpus) > cap.vcpus {
        return Some(format!(
            "{}: vcpus ({} free, {vcpus} needed)",
            node.id,
            cap.vcpus.saturating_sub(load.vcpus)
        ));
    }
    None
}

/// Where to try a sandbox, and why the other live nodes were left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Nodes with room by their last reported load, most free memory
    /// first.
    pub candidates: Vec<String>,
    /// For each live node without room: `<node>: <limit> (...)`.
    pub full: Vec<String>,
}

/// Where to try a sandbox of `memory_bytes` (guest memory) and `vcpus`:
/// the live nodes with room, most free memory first (this node `me` first
/// among equals, which saves a hop). `Err` says, node by node, which limit
/// leaves no room anywhere.
pub fn placement(
    nodes: &[NodeRecord],
    me: &str,
    memory_bytes: u64,
    vcpus: u32,
) -> Result<Placement, String> {
    let needed = memory_bytes.saturating_add(VM_OVERHEAD.bytes());
    let alive: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Alive)
        .collect();
    let full: Vec<String> = alive
        .iter()
        .filter_map(|n| no_room(n, needed, vcpus))
        .collect();
    let mut fits: Vec<&NodeRecord> = alive
        .iter()
        .copied()
        .filter(|n| no_room(n, needed, vcpus).is_none())
        .collect();
    if fits.is_empty() {
        return Err(if full.is_empty() {
            "no node is alive to run it".to_string()
        } else {
            no_node_has_room(memory_bytes, vcpus, &full)
        });
    }
    fits.sort_by_key(|n| {
        let free = n.capacity.memory_bytes.saturating_sub(n.load.memory_bytes);
        (std::cmp::Reverse(free), n.id != me, n.id.clone())
    });
    Ok(Placement {
        candidates: fits.into_iter().map(|n| n.id.clone()).collect(),
        full,
    })
}

/// The answer when every node is full: each node's reason.
pub fn no_node_has_room(memory_bytes: u64, vcpus: u32, reasons: &[String]) -> String {
    format!(
        "no node has room for a sandbox of {} MiB and {vcpus} vCPUs: {}; destroy sandboxes, ask for less, or add a node",
        memory_bytes >> 20,
        reasons.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_store::{NodeCapacity, NodeLoad};

    fn node(id: &str, state: NodeState, free_mib: u64, sandboxes: u32) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            url: format!("http://{id}"),
            hostname: String::new(),
            home: String::new(),
            epoch: 1,
            state,
            started_ms: 0,
            heartbeat_ms: 0,
            heartbeat_seq: 0,
            lease_expires_ms: 0,
            capacity: NodeCapacity {
                sandboxes: 4,
                memory_bytes: 8 << 30,
                vcpus: 8,
            },
            load: NodeLoad {
                sandboxes,
                memory_bytes: (8 << 30) - (free_mib << 20),
                vcpus: 0,
            },
        }
    }

    #[test]
    fn the_node_with_the_most_free_memory_comes_first_and_full_ones_not_at_all() {
        let nodes = [
            node("a", NodeState::Alive, 1000, 1),
            node("b", NodeState::Alive, 4000, 1),
            node("c", NodeState::Alive, 8000, 4),
            node("d", NodeState::Expired, 8000, 0),
            node("e", NodeState::Alive, 100, 0),
        ];
        let placed = placement(&nodes, "a", 256 << 20, 1).unwrap();
        assert_eq!(placed.candidates, ["b", "a"]);
        assert_eq!(placed.full.len(), 2, "{:?}", placed.full);
        // Among equals, this node first.
        let twins = [
            node("x", NodeState::Alive, 2000, 0),
            node("y", NodeState::Alive, 2000, 0),
        ];
        assert_eq!(
            placement(&twins, "y", 256 << 20, 1).unwrap().candidates,
            ["y", "x"]
        );
    }

    #[test]
    fn when_no_node_has_room_the_answer_names_each_limit() {
        let nodes = [
            node("a", NodeState::Alive, 100, 0),
            node("b", NodeState::Alive, 8000, 4),
        ];
        let why = placement(&nodes, "a", 256 << 20, 1).unwrap_err();
        assert!(why.contains("a: memory"), "{why}");
        assert!(why.contains("b: sandboxes (4 of 4 run)"), "{why}");
        let none = placement(&[node("z", NodeState::Left, 1, 0)], "a", 1, 1).unwrap_err();
        assert!(none.contains("no node is alive"), "{none}");
    }

    #[test]
    fn sandbox_paths_and_store_answered_routes() {
        assert_eq!(sandbox_of("/v1/sandboxes/sb-1"), Some("sb-1"));
        assert_eq!(sandbox_of("/v1/sandboxes/sb-1/exec"), Some("sb-1"));
        assert_eq!(sandbox_of("/v1/sandboxes"), None);
        assert_eq!(sandbox_of("/v1/sandboxes/"), None);
        assert_eq!(sandbox_of("/v1/events"), None);
        assert!(answered_anywhere(&Method::GET, "/v1/sandboxes/sb-1"));
        assert!(answered_anywhere(&Method::GET, "/v1/sandboxes/sb-1/events"));
        assert!(!answered_anywhere(&Method::GET, "/v1/sandboxes/sb-1/files"));
        assert!(!answered_anywhere(
            &Method::GET,
            "/v1/sandboxes/sb-1/execs/x1/events"
        ));
        assert!(!answered_anywhere(&Method::DELETE, "/v1/sandboxes/sb-1"));
        assert!(!answered_anywhere(&Method::POST, "/v1/sandboxes/sb-1/exec"));
    }
}
