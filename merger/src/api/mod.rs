//! The HTTP API (axum, JSON; errors as `{"error": "..."}`).
//!
//! One file per kind of endpoint: [`public`] (a video's counts, a stream's live gauge),
//! [`sse`] (the live gauge as server-sent events), [`analytics`] (top lists, time
//! series, breakdowns, totals, uniques, bots, concurrency; behind API keys), [`operator`]
//! (blocking, health, metrics), [`frames`] (edges' frames over HTTPS), [`dashboard`] (the
//! embedded creator dashboard) and [`docs`] (the OpenAPI document's frame). [`auth`] and
//! [`params`] are what the handlers share: who may read, and how query parameters parse.
//! Every answer body is a typed struct with a schema, so the OpenAPI document describes
//! exactly what is sent.

pub mod analytics;
pub mod auth;
pub mod dashboard;
pub mod docs;
pub mod frames;
pub mod operator;
pub mod params;
pub mod public;
pub mod sse;

use crate::ingest::Ingest;
use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;

/// What the handlers share.
#[derive(Clone)]
pub struct Api {
    /// The ingest path and state.
    pub ingest: Ingest,
    /// Bearer token for operator endpoints; `None` disables them.
    pub operator_token: Option<Arc<str>>,
    /// An edge silent for this long stops counting in live gauges.
    pub live_timeout_ms: u64,
    /// Queries over the tiers.
    pub analytics: Arc<crate::analytics::Analytics>,
    /// Where blocked videos are kept.
    pub blocked_path: Arc<std::path::Path>,
    /// The shared live feeds behind the SSE endpoint.
    pub feeds: Arc<crate::feeds::LiveFeeds>,
    /// Longest an analytics query may run before it is interrupted.
    pub query_timeout: std::time::Duration,
    /// Concurrent viewers per stream and minute.
    pub concurrency: Arc<crate::concurrency::Concurrency>,
    /// API keys for the read APIs that are not public.
    pub keys: Arc<crate::keys::KeyStore>,
    /// Live-gauge event streams open per client address.
    pub sse_slots: Arc<tally_link::listener::Slots>,
    /// The cluster node, in cluster mode: video reads go to the partition's owner.
    pub cluster: Option<Arc<crate::cluster::node::Node>>,
    /// Whether `POST /v1/frames` is served on this listener (it carries an edge's
    /// secret: HTTPS only, unless plain HTTP is allowed for local tests).
    pub frames_allowed: bool,
}

/// An error answer: a status and `{"error": "..."}` naming what to fix.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(docs::Problem { error: self.1 })).into_response()
    }
}

/// An error answer with `code` and `msg`.
pub fn err(code: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(code, msg.into())
}

/// The router, every route registered with its OpenAPI entry.
pub fn router(api: Api) -> axum::Router {
    use utoipa::OpenApi;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let (router, doc) = OpenApiRouter::with_openapi(docs::ApiDoc::openapi())
        .routes(routes!(operator::healthz))
        .routes(routes!(operator::metrics))
        .routes(routes!(public::video_stats))
        .routes(routes!(operator::block, operator::unblock))
        .routes(routes!(public::live))
        .routes(routes!(sse::live_sse))
        .routes(routes!(analytics::top))
        .routes(routes!(analytics::timeseries))
        .routes(routes!(analytics::breakdown))
        .routes(routes!(analytics::aggregate))
        .routes(routes!(analytics::uniques))
        .routes(routes!(analytics::bots))
        .routes(routes!(analytics::concurrent))
        .routes(routes!(frames::post_frame))
        .routes(routes!(dashboard::serve))
        .split_for_parts();
    let doc: Arc<str> = Arc::from(doc.to_pretty_json().unwrap_or_default());
    router
        .route("/dashboard/{*file}", get(dashboard::serve))
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], doc.to_string()) }
            }),
        )
        .fallback(|| async { err(StatusCode::NOT_FOUND, "no such endpoint; see /openapi.json") })
        // gzip for clients that ask (the dashboard's map is 0.8 MB, 0.15 MB gzipped);
        // tower-http's default predicate leaves SSE streams and tiny bodies alone
        .layer(tower_http::compression::CompressionLayer::new())
        .with_state(api)
}
