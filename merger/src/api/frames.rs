//! Frames over HTTPS for edge runtimes without QUIC (the Spin app): the same checks,
//! durability and answers as the QUIC endpoint, mapped to HTTP statuses.

use super::auth::bearer;
use super::docs::Problem;
use super::{Api, ApiError, err};
use crate::edges::AuthError;
use crate::ingest::IngestError;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use tally_link::protocol::Ack;
use utoipa::ToSchema;

/// Longest the body of a frame may take to arrive once its edge is authenticated.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Reads a frame's body: at most the protocol's message limit, within [`BODY_TIMEOUT`].
async fn read_frame(body: Body) -> Result<Bytes, ApiError> {
    let limit = tally_link::protocol::MAX_MESSAGE;
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => Err(err(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("frame body unreadable ({e}); frames over {limit} bytes must be split"),
        )),
        Err(_) => Err(err(
            StatusCode::REQUEST_TIMEOUT,
            format!("the frame's body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
        )),
    }
}

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
    body: Body,
) -> Result<Json<FrameAnswer>, ApiError> {
    if !api.frames_allowed {
        return Err(err(
            StatusCode::FORBIDDEN,
            "frames carry the edge's secret: post them over HTTPS (the merger's --https-listen) or send them over QUIC",
        ));
    }
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
    let verdict = api.ingest.authenticate(ip, edge, secret);
    if matches!(verdict, Err(AuthError::Throttled { .. })) {
        tokio::time::sleep(crate::edges::THROTTLED_DELAY).await;
    }
    verdict.map_err(|why| {
        let code = match why {
            AuthError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            AuthError::Refused { .. } => StatusCode::UNAUTHORIZED,
        };
        err(code, why.to_string())
    })?;
    // the body is read only now that the edge is known, in bounded size and time
    let body = read_frame(body).await?;
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
