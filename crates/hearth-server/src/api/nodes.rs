//! The nodes of the cluster: who runs, with what lease, capacity and load.

use axum::extract::State;
use axum::Json;

use super::model::{NodeList, NodeView};
use super::AppState;
use crate::error::{ApiError, ErrorResponse};

/// Every node that ever took a lease in this store, with its lease,
/// capacity and last reported load (this node's load is live).
#[utoipa::path(
    get,
    path = "/v1/nodes",
    tag = "nodes",
    responses(
        (status = 200, description = "OK", body = NodeList),
        (status = 401, description = "No valid token", body = ErrorResponse),
        (status = 503, description = "The store is unavailable", body = ErrorResponse),
    )
)]
pub async fn list_nodes(State(state): State<AppState>) -> Result<Json<NodeList>, ApiError> {
    let me = state.manager.node().id().to_string();
    let mut nodes = state.events.store().nodes().await?;
    for node in &mut nodes {
        if node.id == me {
            node.load = state.manager.load();
        }
    }
    let nodes = nodes
        .into_iter()
        .map(|n| NodeView::from_record(n, &me))
        .collect();
    Ok(Json(NodeList { nodes }))
}
