//! What an operator calls: blocking a video (with the operator token), health, and the
//! Prometheus metrics (rendered by [`crate::metrics`]).

use super::auth::operator;
use super::docs::Problem;
use super::{Api, ApiError, err};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Whether a video is blocked, after a change.
#[derive(Debug, Serialize, ToSchema)]
pub struct BlockState {
    /// Video id.
    pub video: String,
    /// Blocked now.
    pub blocked: bool,
}

/// Readiness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `failing`.
    pub status: &'static str,
    /// What fails, when something does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

/// Blocks a video.
#[utoipa::path(put, path = "/v1/videos/{id}/block", tag = "operator", summary = "Blocks a video: edges refuse its events, its counts are hidden", params(("id" = String, Path, description = "Video id")), security(("operator" = [])), responses((status = 200, description = "blocked", body = BlockState), (status = 401, description = "operator token required", body = Problem)))]
pub async fn block(api: State<Api>, headers: HeaderMap, id: Path<String>) -> Result<Json<BlockState>, ApiError> {
    set_blocked(api, headers, id, true).await
}

/// Unblocks a video.
#[utoipa::path(delete, path = "/v1/videos/{id}/block", tag = "operator", summary = "Unblocks a video", params(("id" = String, Path, description = "Video id")), security(("operator" = [])), responses((status = 200, description = "unblocked", body = BlockState), (status = 401, description = "operator token required", body = Problem)))]
pub async fn unblock(api: State<Api>, headers: HeaderMap, id: Path<String>) -> Result<Json<BlockState>, ApiError> {
    set_blocked(api, headers, id, false).await
}

async fn set_blocked(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
    blocked: bool,
) -> Result<Json<BlockState>, ApiError> {
    operator(&api, &headers)?;
    if id.is_empty() || id.len() > 256 {
        return Err(err(StatusCode::BAD_REQUEST, "video id must be 1 to 256 bytes"));
    }
    if let Some(node) = &api.cluster {
        // cluster-wide: recorded in the cluster's replicated bucket before the answer
        node.set_blocked(&id, blocked).await.map_err(|e| {
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot record the block in the cluster ({e}); nothing changed, retry"),
            )
        })?;
        return Ok(Json(BlockState { video: id, blocked }));
    }
    // Durable before it is answered; the state changes only if the file could be written.
    let mut s = api.ingest.write();
    let mut set: std::collections::BTreeSet<String> = s.blocked().cloned().collect();
    if blocked {
        set.insert(id.clone());
    } else {
        set.remove(&id);
    }
    crate::blocked::save(&api.blocked_path, &set).map_err(|e| {
        err(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot record the block durably ({e}); nothing changed, retry"),
        )
    })?;
    s.set_blocked(&id, blocked);
    Ok(Json(BlockState { video: id, blocked }))
}

/// 200 while frames can be made durable; 503 once the frame log broke.
#[utoipa::path(get, path = "/healthz", tag = "operations", summary = "Readiness", responses((status = 200, description = "ready", body = Health), (status = 503, description = "not ready", body = Health)))]
pub async fn healthz(State(api): State<Api>) -> Response {
    if api.ingest.metrics().log_broken() {
        let body = Health {
            status: "failing",
            error: Some(
                "the frame log could not be restored after a write failure; frames are refused until the merger is restarted",
            ),
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(Health {
        status: "ok",
        error: None,
    })
    .into_response()
}

/// Prometheus metrics, with the operator token: they carry platform totals (views,
/// likes, facts counted) that the analytics API gives only to platform keys.
#[utoipa::path(get, path = "/metrics", tag = "operations", summary = "Prometheus metrics", security(("operator" = [])),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"),
        (status = 401, description = "no or wrong operator token", body = Problem),
        (status = 403, description = "operator endpoints are disabled", body = Problem)))]
pub async fn metrics(State(api): State<Api>, headers: HeaderMap) -> Result<Response, ApiError> {
    operator(&api, &headers)?;
    let text = api
        .ingest
        .metrics()
        .render(&api.ingest.read(), api.feeds.len(), tally_delta::now_ms());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
