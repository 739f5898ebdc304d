//! Frames over HTTPS for edge runtimes without QUIC (the Spin app): the same checks,
//! durability and answers as the QUIC endpoint, mapped to HTTP statuses.

use super::auth::bearer;
use super::docs::Problem;
use super::{Api, ApiError, err};
use crate::edges::AuthError;
use crate::ingest::IngestError;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use tally_link::protocol::Ack;
use utoipa::ToSchema;

/// A frame's acknowledgement, with the blocked videos (for edges without the push stream).
#[derive(Debug, Serialize, ToSchema)]
pub struct FrameAnswer {
    /// `applied` or `duplicate` (both mean: durable, drop it from the spool).
    pub ack: &'static str,
    /// Every blocked video, sorted.
    pub blocked: Vec<String>,
}

/// Frames over HTTP for edges that cannot speak QUIC: `X-Tally-Edge` names the edge,
/// `Authorization: Bearer <secret>` authenticates it, the body is one encoded frame.
#[utoipa::path(post, path = "/v1/frames", tag = "edges", summary = "One encoded delta frame from an edge (HTTPS only; for edges without QUIC such as the Spin app)", params(("x-tally-edge" = String, Header, description = "The edge id"), ("idempotency-key" = Option<String>, Header, description = "edge/epoch/seq")), security(("edge" = [])), request_body(content = Vec<u8>, content_type = "application/octet-stream"), responses((status = 200, description = "acknowledged (also a duplicate); names the blocked videos", body = FrameAnswer), (status = 400, description = "refused for good", body = Problem), (status = 401, description = "unknown edge or wrong secret", body = Problem), (status = 403, description = "frames over plain HTTP", body = Problem), (status = 413, description = "frame too large", body = Problem), (status = 429, description = "too many failed authentications", body = Problem), (status = 503, description = "not durable now; resend", body = Problem)))]
pub async fn post_frame(
    State(api): State<Api>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<FrameAnswer>, ApiError> {
    if !api.frames_allowed {
        return Err(err(
            StatusCode::FORBIDDEN,
            "frames carry the edge's secret: post them over HTTPS (the merger's --https-listen) or send them over QUIC",
        ));
    }
    let body = body.map_err(|e| {
        err(
            e.status(),
            format!(
                "frame body unreadable ({e}); frames over {} bytes must be split",
                tally_link::protocol::MAX_MESSAGE
            ),
        )
    })?;
    let edge = headers
        .get("x-tally-edge")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| err(StatusCode::UNAUTHORIZED, "X-Tally-Edge header required"))?;
    let secret = bearer(&headers)
        .ok_or_else(|| err(StatusCode::UNAUTHORIZED, "Authorization: Bearer <edge secret> required"))?;
    // the client's address, from the listener (HTTPS and plain HTTP both set it)
    let ip = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    api.ingest.authenticate(ip, edge, secret).map_err(|why| {
        let code = match why {
            AuthError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            AuthError::Refused { .. } => StatusCode::UNAUTHORIZED,
        };
        err(code, why.to_string())
    })?;
    // the answer names the blocked videos, for edges without the push stream (Spin)
    let blocked = || api.ingest.read().blocked_list();
    match api.ingest.submit(edge, body.to_vec()).await {
        Ok(Ack::Applied) => Ok(Json(FrameAnswer {
            ack: "applied",
            blocked: blocked(),
        })),
        Ok(Ack::Duplicate) => Ok(Json(FrameAnswer {
            ack: "duplicate",
            blocked: blocked(),
        })),
        Ok(Ack::Rejected(why)) => Err(err(StatusCode::BAD_REQUEST, why)),
        Ok(Ack::Later(why)) => Err(err(StatusCode::SERVICE_UNAVAILABLE, why)),
        Err(why @ (IngestError::NotDurable | IngestError::ShuttingDown)) => {
            Err(err(StatusCode::SERVICE_UNAVAILABLE, why.to_string()))
        }
    }
}
