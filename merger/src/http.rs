//! The HTTP API (axum, JSON; errors as `{"error": "..."}`).

use crate::analytics::{Analytics, DIMENSIONS, Filter, Granularity};
use crate::ingest::{Ingest, now_ms};
use crate::keys::{Denied, Grant, Scope};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use tally_delta::Country;
use tally_link::protocol::Ack;

/// What the handlers share.
#[derive(Clone)]
pub struct Api {
    /// The ingest path and state.
    pub ingest: Ingest,
    /// Bearer token for operator endpoints; `None` disables them.
    pub operator_token: Option<Arc<str>>,
    /// An edge silent for this long stops counting in live gauges.
    pub live_timeout_ms: u64,
    /// Failures of the tier writer.
    pub tier_errors: Arc<std::sync::atomic::AtomicU64>,
    /// Frames the tier writer could not take (they stay in the frame log).
    pub tier_quarantined: Arc<std::sync::atomic::AtomicU64>,
    /// Queries over the tiers.
    pub analytics: Arc<Analytics>,
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
    /// Whether `POST /v1/frames` is served on this listener (it carries an edge's
    /// secret: HTTPS only, unless plain HTTP is allowed for local tests).
    pub frames_allowed: bool,
}

/// An error answer.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn err(code: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(code, msg.into())
}

/// Times past this (10000-01-01) are refused rather than truncated into another range.
const MAX_TIME_MS: u64 = 253_402_300_800_000;
const TIME_RANGE_ERROR: &str = "`from` and `to` must be before the year 10000 (ms since the Unix epoch)";

/// The router.
pub fn router(api: Api) -> Router {
    use utoipa::OpenApi;
    use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
    use utoipa_axum::routes;
    let frames_limit = axum::extract::DefaultBodyLimit::max(tally_link::protocol::MAX_MESSAGE);
    let (router, doc) = OpenApiRouter::with_openapi(crate::apidoc::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(video_stats))
        .routes(routes!(block, unblock))
        .routes(routes!(live))
        .routes(routes!(live_sse))
        .routes(routes!(top))
        .routes(routes!(timeseries))
        .routes(routes!(breakdown))
        .routes(routes!(aggregate))
        .routes(routes!(uniques))
        .routes(routes!(bots))
        .routes(routes!(concurrent))
        .routes(routes!(post_frame).layer(frames_limit))
        .routes(routes!(crate::dashboard::serve))
        .split_for_parts();
    let doc: Arc<str> = Arc::from(doc.to_pretty_json().unwrap_or_default());
    router
        .route("/dashboard/{*file}", get(crate::dashboard::serve))
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

/// The stats body of a video, `None` when nothing is recorded for it.
pub fn video_json(s: &crate::state::State, id: &str) -> Option<serde_json::Value> {
    if s.is_blocked(id) {
        // a blocked video's counts are not shown anywhere
        return Some(json!({ "video": id, "blocked": true }));
    }
    match s.video(id) {
        Some(v) => Some(json!({
            "video": id, "channel": v.channel, "category": v.category,
            "views": v.counts.views, "uniques": v.uniques.estimate().round() as u64,
            "watch_time_s": v.counts.watch_ms / 1000, "completions": v.counts.completions,
            "likes": v.counts.likes, "shares": v.counts.shares, "comments": v.counts.comments,
            "blocked": false,
        })),
        None => None,
    }
}

/// The live gauge body of a stream.
pub fn live_json(s: &crate::state::State, stream: &str, timeout_ms: u64) -> serde_json::Value {
    let v = s.live(stream, now_ms(), timeout_ms);
    json!({ "stream": stream, "watching": v.watching, "connected": v.connected, "peak": v.peak })
}

#[utoipa::path(get, path = "/v1/videos/{id}/stats", tag = "public", summary = "A video's all-time counts (public; a blocked video shows only `blocked`)", params(("id" = String, Path, description = "Video id")), responses((status = 200, description = "{video, channel, category, views, uniques, watch_time_s, completions, likes, shares, comments}", content_type = "application/json"), (status = 404, description = "no views recorded", body = crate::apidoc::Problem)))]
async fn video_stats(State(api): State<Api>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let body = video_json(&api.ingest.read(), &id)
        .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("no views recorded for video {id}")))?;
    Ok(([(header::CACHE_CONTROL, "public, max-age=1")], Json(body)).into_response())
}

#[utoipa::path(get, path = "/v1/live/{stream}", tag = "public", summary = "Concurrent viewers of a live stream now (public)", params(("stream" = String, Path, description = "Stream id")), responses((status = 200, description = "{stream, watching, connected, peak}", content_type = "application/json")))]
async fn live(State(api): State<Api>, Path(stream): Path<String>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "public, max-age=1")],
        Json(live_json(&api.ingest.read(), &stream, api.live_timeout_ms)),
    )
}

#[utoipa::path(get, path = "/v1/live/{stream}/events", tag = "public", summary = "The live gauge as server-sent events, at most one a second (public)", params(("stream" = String, Path, description = "Stream id")), responses((status = 200, description = "text/event-stream of {stream, watching, connected, peak}", content_type = "text/event-stream"), (status = 503, description = "too many streams followed", body = crate::apidoc::Problem)))]
async fn live_sse(
    State(api): State<Api>,
    Path(stream): Path<String>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    if stream.is_empty() || stream.len() > 128 {
        return Err(err(StatusCode::BAD_REQUEST, "stream id must be 1..=128 bytes"));
    }
    // every client of a stream shares one feed (see `feeds`)
    let rx = api.feeds.follow(&stream).ok_or_else(|| {
        err(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live streams are followed on this merger; retry later",
        )
    })?;
    // The current gauge first (if the feed has one), then each change: after an event
    // the stream waits for the feed to change, so an idle stream sends nothing.
    let s = futures_util::stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first {
            rx.changed().await.ok()?;
        }
        loop {
            let body = rx.borrow_and_update().clone();
            if let Some(body) = body {
                let ev = Event::default().event("live").data(body);
                return Some((Ok(ev), (rx, false)));
            }
            rx.changed().await.ok()?;
        }
    });
    Ok(Sse::new(s).keep_alive(KeepAlive::default()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct TopQuery {
    /// Two-letter country code.
    country: Option<String>,
    /// Start, ms since the Unix epoch (default: an hour ago).
    from: Option<u64>,
    /// End, ms since the Unix epoch (default: a minute from now).
    to: Option<u64>,
    /// How many, 1 to 1000 (default 10).
    k: Option<usize>,
}

#[utoipa::path(get, path = "/v1/top", tag = "analytics", summary = "The most viewed videos over a window, exact", params(TopQuery), security(("api_key" = [])), responses((status = 200, description = "{from, to, k, error_bound: 0, exact: true, items: [{video, views}]}", content_type = "application/json"), crate::apidoc::AnalyticsErrors))]
async fn top(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(q): Query<TopQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    platform_reader(&api, &headers, "/v1/top")?;
    let now = now_ms();
    let to = q.to.unwrap_or(now + 60_000);
    let from = q.from.unwrap_or(now.saturating_sub(3_600_000));
    if from >= to {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "`from` must be before `to` (ms since the Unix epoch)",
        ));
    }
    let k = q.k.unwrap_or(10);
    if k == 0 || k > 1000 {
        return Err(err(StatusCode::BAD_REQUEST, "`k` must be between 1 and 1000"));
    }
    let country = match q.country.as_deref() {
        None | Some("") => None,
        Some(c) => {
            let parsed = Country::from_header(c);
            if parsed == Country::UNKNOWN && !c.eq_ignore_ascii_case("xx") {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    format!("country {c:?} is not a two-letter code"),
                ));
            }
            Some(parsed)
        }
    };
    if to > MAX_TIME_MS {
        return Err(err(StatusCode::BAD_REQUEST, TIME_RANGE_ERROR));
    }
    // below MAX_TIME_MS every minute fits a u32
    let (from_min, to_min) = ((from / 60_000) as u32, to.div_ceil(60_000) as u32);
    let live: Option<Vec<serde_json::Value>> = {
        let s = api.ingest.read();
        match s.oldest_minute() {
            Some(oldest) if from_min < oldest => None,
            _ => Some(
                s.top(country, from_min, to_min, k + s.blocked().count())
                    .into_iter()
                    .filter(|(v, _)| !s.is_blocked(v))
                    .take(k)
                    .map(|(v, n)| json!({ "video": v, "views": n }))
                    .collect(),
            ),
        }
    };
    let items = match live {
        Some(items) => items,
        None => {
            // Older than the live state: the same exact ranking from the tiers.
            let mut f = Filter {
                eq: country.map(|c| vec![("country", c.to_string())]).unwrap_or_default(),
                from_ms: from,
                to_ms: to,
                ..Default::default()
            };
            apply_blocks(&api, &mut f)?;
            let rows = query(&api, move |a, c| a.breakdown_on(c, &f, "video", k)).await?;
            rows.into_iter()
                .filter(|r| r.views > 0)
                .map(|r| json!({ "video": r.key, "views": r.views }))
                .collect()
        }
    };
    Ok(Json(json!({
        "country": country.map(|c| c.to_string()),
        "from": from_min as u64 * 60_000, "to": to_min as u64 * 60_000, "k": k,
        "error_bound": 0, "exact": true, "items": items,
    })))
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Checks the request's API key (see [`crate::keys`]).
fn reader(api: &Api, headers: &HeaderMap) -> Result<Grant, ApiError> {
    api.keys.authenticate(bearer(headers)).map_err(|d| match d {
        Denied::Unauthenticated => err(
            StatusCode::UNAUTHORIZED,
            "a valid API key is required: Authorization: Bearer <key> (create one with `tally keys create`)",
        ),
        Denied::RateLimited { per_min } => err(
            StatusCode::TOO_MANY_REQUESTS,
            format!("this API key is over its limit of {per_min} requests a minute; slow down"),
        ),
    })
}

/// Checks the API key and narrows the query to the key's channel (a channel's key asking
/// for another channel is refused).
fn scoped_reader(api: &Api, headers: &HeaderMap, q: &mut HashMap<String, String>) -> Result<Grant, ApiError> {
    let g = reader(api, headers)?;
    if let Scope::Channel(c) = &g.scope {
        match q.get("channel") {
            Some(asked) if asked != c => {
                return Err(err(
                    StatusCode::FORBIDDEN,
                    format!("this key reads channel {c} only, not {asked}"),
                ));
            }
            _ => {
                q.insert("channel".into(), c.clone());
            }
        }
    }
    Ok(g)
}

/// Checks for an API key scoped to the whole platform.
fn platform_reader(api: &Api, headers: &HeaderMap, what: &str) -> Result<(), ApiError> {
    match reader(api, headers)?.scope {
        Scope::Platform => Ok(()),
        Scope::Channel(c) => Err(err(
            StatusCode::FORBIDDEN,
            format!("{what} needs a platform key; this key reads channel {c} only"),
        )),
    }
}

/// Compares a secret with the expected one in constant time (their digests).
fn same_secret(given: &str, want: &str) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(given.as_bytes()), Sha256::digest(want.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn operator(api: &Api, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(want) = &api.operator_token else {
        return Err(err(
            StatusCode::FORBIDDEN,
            "operator endpoints are disabled: start the merger with --operator-token",
        ));
    };
    match bearer(&headers) {
        Some(t) if same_secret(t, want) => Ok(()),
        _ => Err(err(
            StatusCode::UNAUTHORIZED,
            "operator token required: Authorization: Bearer <token>",
        )),
    }
}

#[utoipa::path(put, path = "/v1/videos/{id}/block", tag = "operator", summary = "Blocks a video: edges refuse its events, its counts are hidden", params(("id" = String, Path, description = "Video id")), security(("operator" = [])), responses((status = 200, description = "{video, blocked: true}", content_type = "application/json"), (status = 401, description = "operator token required", body = crate::apidoc::Problem)))]
async fn block(api: State<Api>, headers: HeaderMap, id: Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    set_blocked(api, headers, id, true)
}

#[utoipa::path(delete, path = "/v1/videos/{id}/block", tag = "operator", summary = "Unblocks a video", params(("id" = String, Path, description = "Video id")), security(("operator" = [])), responses((status = 200, description = "{video, blocked: false}", content_type = "application/json"), (status = 401, description = "operator token required", body = crate::apidoc::Problem)))]
async fn unblock(api: State<Api>, headers: HeaderMap, id: Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    set_blocked(api, headers, id, false)
}

fn set_blocked(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
    blocked: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    operator(&api, &headers)?;
    if id.is_empty() || id.len() > 256 {
        return Err(err(StatusCode::BAD_REQUEST, "video id must be 1 to 256 bytes"));
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
    Ok(Json(json!({ "video": id, "blocked": blocked })))
}

/// Frames over HTTP for edges that cannot speak QUIC: `X-Tally-Edge` names the edge,
/// `Authorization: Bearer <secret>` authenticates it, the body is one encoded frame.
#[utoipa::path(post, path = "/v1/frames", tag = "edges", summary = "One encoded delta frame from an edge (HTTPS only; for edges without QUIC such as the Spin app)", params(("x-tally-edge" = String, Header, description = "The edge id"), ("idempotency-key" = Option<String>, Header, description = "edge/epoch/seq")), security(("edge" = [])), request_body(content = Vec<u8>, content_type = "application/octet-stream"), responses((status = 200, description = "acknowledged (also a duplicate); names the blocked videos", content_type = "application/json"), (status = 400, description = "refused for good", body = crate::apidoc::Problem), (status = 401, description = "unknown edge or wrong secret", body = crate::apidoc::Problem), (status = 403, description = "frames over plain HTTP", body = crate::apidoc::Problem), (status = 413, description = "frame too large", body = crate::apidoc::Problem), (status = 429, description = "too many failed authentications", body = crate::apidoc::Problem), (status = 503, description = "not durable now; resend", body = crate::apidoc::Problem)))]
async fn post_frame(
    State(api): State<Api>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
        let code = if why.starts_with("too many failed attempts") {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            StatusCode::UNAUTHORIZED
        };
        err(code, why)
    })?;
    // the answer names the blocked videos, for edges without the push stream (Spin)
    let blocked = || api.ingest.read().blocked_list();
    match api.ingest.submit(edge, body.to_vec()).await {
        Ok(Ack::Applied) => Ok(Json(json!({ "ack": "applied", "blocked": blocked() }))),
        Ok(Ack::Duplicate) => Ok(Json(json!({ "ack": "duplicate", "blocked": blocked() }))),
        Ok(Ack::Rejected(why)) => Err(err(StatusCode::BAD_REQUEST, why)),
        Ok(Ack::Later(why)) => Err(err(StatusCode::SERVICE_UNAVAILABLE, why)),
        Err(why) => Err(err(StatusCode::SERVICE_UNAVAILABLE, why)),
    }
}

/// 200 while frames can be made durable; 503 once the frame log broke.
#[utoipa::path(get, path = "/healthz", tag = "operations", summary = "Readiness", responses((status = 200, description = "ready", content_type = "application/json"), (status = 503, description = "not ready", content_type = "application/json")))]
async fn healthz(State(api): State<Api>) -> Response {
    if api.ingest.read().counters.log_broken {
        let body = json!({ "status": "failing", "error": "the frame log could not be restored after a write failure; frames are refused until the merger is restarted" });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(json!({ "status": "ok" })).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "operations", summary = "Prometheus metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    let s = api.ingest.read();
    let c = s.counters;
    let totals = s.totals();
    let lag_ms = if c.last_frame_end_ms == 0 {
        0
    } else {
        now_ms().saturating_sub(c.last_frame_end_ms)
    };
    let text = format!(
        "# HELP tally_frames_total Frames by outcome.\n# TYPE tally_frames_total counter\n\
         tally_frames_total{{outcome=\"applied\"}} {}\ntally_frames_total{{outcome=\"duplicate\"}} {}\ntally_frames_total{{outcome=\"rejected\"}} {}\ntally_frames_total{{outcome=\"later\"}} {}\ntally_frames_total{{outcome=\"conflict\"}} {}\ntally_frames_total{{outcome=\"too_large\"}} {}\n\
         # HELP tally_frame_gaps Frames missing below the newest applied sequence number.\n# TYPE tally_frame_gaps gauge\ntally_frame_gaps {}\n\
         # HELP tally_events_total Events counted by edges in applied frames.\n# TYPE tally_events_total counter\ntally_events_total {}\n\
         # HELP tally_counter_rows_total Counter rows applied.\n# TYPE tally_counter_rows_total counter\ntally_counter_rows_total {}\n\
         # HELP tally_ingest_lag_ms Merger time minus the newest frame's interval end.\n# TYPE tally_ingest_lag_ms gauge\ntally_ingest_lag_ms {}\n\
         # HELP tally_videos Videos with counts in live state.\n# TYPE tally_videos gauge\ntally_videos {}\n\
         # HELP tally_views_total Views of all videos, all time.\n# TYPE tally_views_total counter\ntally_views_total {}\n\
         # HELP tally_likes_total Likes of all videos now (users whose latest like event is a like).\n# TYPE tally_likes_total gauge\ntally_likes_total {}\n\
         # HELP tally_shares_total Shares of all videos, all time.\n# TYPE tally_shares_total counter\ntally_shares_total {}\n\
         # HELP tally_comments_total Comments of all videos, all time.\n# TYPE tally_comments_total counter\ntally_comments_total {}\n\
         # HELP tally_tier_errors_total Tier writer failures (each retried).\n# TYPE tally_tier_errors_total counter\ntally_tier_errors_total {}\n\
         # HELP tally_frame_trackers (edge, epoch) pairs whose applied frames are tracked.\n# TYPE tally_frame_trackers gauge\ntally_frame_trackers {}\n{}",
        c.frames_applied,
        c.frames_duplicate,
        c.frames_rejected,
        c.frames_later,
        c.frames_conflict,
        c.frames_too_large,
        s.gaps(),
        c.events_accepted,
        c.counter_rows,
        lag_ms,
        s.video_count(),
        s.total_views(),
        totals.likes,
        totals.shares,
        totals.comments,
        api.tier_errors.load(std::sync::atomic::Ordering::Relaxed),
        s.tracker_count(),
        fact_metrics(&s.facts),
    );
    let text = format!(
        "{text}# HELP tally_tier_quarantined_frames_total Frames the tier writer could not take (logged with their log position, kept in quarantine/, and in the live counts).\n# TYPE tally_tier_quarantined_frames_total counter\ntally_tier_quarantined_frames_total {}\n\
         # HELP tally_log_write_failures_total Frame log group commits that failed (not acknowledged; edges resend).\n# TYPE tally_log_write_failures_total counter\ntally_log_write_failures_total {}\n\
         # HELP tally_log_damaged_regions Damaged regions found in the frame log at start (intact records around them kept).\n# TYPE tally_log_damaged_regions gauge\ntally_log_damaged_regions {}\n\
         # HELP tally_log_broken 1 when the frame log could not be restored after a failure and takes no more frames.\n# TYPE tally_log_broken gauge\ntally_log_broken {}\n",
        api.tier_quarantined.load(std::sync::atomic::Ordering::Relaxed),
        c.log_write_failures,
        c.log_damaged,
        u8::from(c.log_broken),
    );
    let text = format!(
        "{text}# HELP tally_live_feeds Live streams followed over SSE (one shared feed each).\n# TYPE tally_live_feeds gauge\ntally_live_feeds {}\n\
         # HELP tally_checkpoints_total Checkpoints of the live state written by this process.\n# TYPE tally_checkpoints_total counter\ntally_checkpoints_total {}\n\
         # HELP tally_checkpoint_failures_total Checkpoints that could not be written (the log keeps everything).\n# TYPE tally_checkpoint_failures_total counter\ntally_checkpoint_failures_total {}\n\
         # HELP tally_checkpoint_bytes Size of the last checkpoint.\n# TYPE tally_checkpoint_bytes gauge\ntally_checkpoint_bytes {}\n\
         # HELP tally_checkpoints_damaged Checkpoints found damaged at start (an older one and more log were used).\n# TYPE tally_checkpoints_damaged gauge\ntally_checkpoints_damaged {}\n\
         # HELP tally_log_bytes_freed_total Frame log bytes deleted behind the checkpoints and the tiers.\n# TYPE tally_log_bytes_freed_total counter\ntally_log_bytes_freed_total {}\n",
        api.feeds.len(),
        c.checkpoints,
        c.checkpoint_failures,
        c.checkpoint_bytes,
        c.checkpoints_damaged,
        c.log_bytes_freed,
    );
    let text = format!(
        "{text}# HELP tally_bot_events_total Events edges refused because their request came from a bot.\n# TYPE tally_bot_events_total counter\ntally_bot_events_total {}\n",
        c.bot_events,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// The fact sets' series: what they counted, the copies they caught, their size.
fn fact_metrics(f: &tally_delta::FactIndex) -> String {
    use std::fmt::Write;
    use tally_delta::FactKind;
    let mut out = String::new();
    let mut per_kind = |name: &str, kind: &str, help: &str, value: &dyn Fn(FactKind) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for k in FactKind::ALL {
            let _ = writeln!(out, "{name}{{kind=\"{}\"}} {}", k.name(), value(k));
        }
    };
    per_kind(
        "tally_duplicate_facts_total",
        "counter",
        "Copies of already counted facts (views, completions, shares, comments by key; likes that changed nothing) that did not count.",
        &|k| f.stats.duplicates[k as usize],
    );
    per_kind(
        "tally_facts_counted_total",
        "counter",
        "Facts counted for the first time (likes: state changes).",
        &|k| f.stats.counted[k as usize],
    );
    let (keys, likes) = f.sizes();
    per_kind(
        "tally_fact_keys",
        "gauge",
        "Fact keys held in the merger's time-bucketed sets (likes: registers).",
        &|k| keys.get(k as usize).map_or(likes, |n| *n) as u64,
    );
    let _ = write!(
        out,
        "# HELP tally_fact_memory_bytes Bytes of the fact sets' tables.\n# TYPE tally_fact_memory_bytes gauge\ntally_fact_memory_bytes {}\n\
         # HELP tally_facts_beyond_window_total Facts older than every retained key bucket, counted unchecked.\n# TYPE tally_facts_beyond_window_total counter\ntally_facts_beyond_window_total {}\n",
        f.memory_bytes(),
        f.stats.beyond_window
    );
    out
}

/// Runs a tier query on the blocking pool (DuckDB calls block), mapping failures to 500s.
/// Analytics queries running at once (one per pooled connection).
static QUERIES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(crate::analytics::READERS);
/// How long a query may wait for a free connection before the answer is "busy".
const QUERY_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs an analytics query on a pooled connection, at most [`crate::analytics::READERS`]
/// at once (others wait up to 2 s, then `503`), interrupted after `api.query_timeout`
/// (`504`, the connection freed for the next query).
async fn query<T: Send + 'static>(
    api: &Api,
    q: impl FnOnce(&Analytics, &duckdb::Connection) -> Result<T, duckdb::Error> + Send + 'static,
) -> Result<T, ApiError> {
    let Ok(Ok(_permit)) = tokio::time::timeout(QUERY_QUEUE_WAIT, QUERIES.acquire()).await else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "analytics is busy with other queries; retry in a moment".into(),
        ));
    };
    let a = api.analytics.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::task::spawn_blocking(move || a.with_conn(|h| drop(tx.send(h)), |c| q(&a, c)));
    let handle = rx.await.ok();
    match tokio::time::timeout(api.query_timeout, task).await {
        Ok(r) => r
            .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("query failed: {e}"))),
        Err(_) => {
            if let Some(h) = handle {
                h.interrupt();
            }
            Err(err(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the query took longer than {} ms and was stopped; ask for a shorter range or a coarser granularity",
                    api.query_timeout.as_millis()
                ),
            ))
        }
    }
}

/// Query parameters the analytics endpoints take besides the dimension filters.
const PARAMS: [&str; 9] = ["from", "to", "date_range", "granularity", "by", "limit", "page", "format", "compare"];

/// `date_range` shortcuts, ending now.
const DATE_RANGES: [(&str, u64); 6] = [
    ("60m", 3_600_000),
    ("24h", 86_400_000),
    ("7d", 7 * 86_400_000),
    ("30d", 30 * 86_400_000),
    ("12mo", 365 * 86_400_000),
    ("all", MAX_TIME_MS),
];

/// A time parameter: ms since the Unix epoch, an RFC 3339 time with its offset
/// (`2026-11-20T09:30:00+01:00`), or a date (`2026-11-20`, midnight UTC).
fn time_param(k: &str, v: &str) -> Result<u64, ApiError> {
    let bad = || {
        err(
            StatusCode::BAD_REQUEST,
            format!("`{k}` must be ms since the Unix epoch, an ISO date (2026-11-20) or time with its zone (2026-11-20T09:30:00+01:00), not {v:?}"),
        )
    };
    if let Ok(ms) = v.parse::<u64>() {
        return Ok(ms);
    }
    let ms = if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        t.timestamp_millis()
    } else if let Ok(d) = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        d.and_hms_opt(0, 0, 0).ok_or_else(bad)?.and_utc().timestamp_millis()
    } else {
        return Err(bad());
    };
    u64::try_from(ms).map_err(|_| err(StatusCode::BAD_REQUEST, TIME_RANGE_ERROR))
}

/// Reads filters and range from query parameters: `from`/`to` (ms, ISO date, or RFC 3339
/// time with zone) or `date_range` (60m, 24h, 7d, 30d, 12mo, all); default the last 24 h.
/// A dimension filter is `country=DE` (is), `country=DE,FR` (in), `country=!US` or
/// `country=!US,GB` (is not); filters on several dimensions all apply.
fn filter(q: &HashMap<String, String>) -> Result<Filter, ApiError> {
    let now = now_ms();
    let (from_ms, to_ms) = match q.get("date_range") {
        Some(r) => {
            if q.contains_key("from") || q.contains_key("to") {
                return Err(err(StatusCode::BAD_REQUEST, "give `date_range` or `from`/`to`, not both"));
            }
            let span = DATE_RANGES.iter().find(|(name, _)| name == r).map(|(_, ms)| *ms).ok_or_else(|| {
                let names: Vec<&str> = DATE_RANGES.iter().map(|(n, _)| *n).collect();
                err(StatusCode::BAD_REQUEST, format!("`date_range` is one of {}", names.join(", ")))
            })?;
            (now.saturating_sub(span), now)
        }
        None => {
            let to_ms = q.get("to").map(|v| time_param("to", v)).transpose()?.unwrap_or(now);
            let from_ms = q
                .get("from")
                .map(|v| time_param("from", v))
                .transpose()?
                .unwrap_or(to_ms.saturating_sub(86_400_000));
            (from_ms, to_ms)
        }
    };
    if to_ms > MAX_TIME_MS {
        return Err(err(StatusCode::BAD_REQUEST, TIME_RANGE_ERROR));
    }
    if from_ms >= to_ms {
        return Err(err(StatusCode::BAD_REQUEST, "`from` must be before `to`"));
    }
    let mut f = Filter {
        from_ms,
        to_ms,
        ..Default::default()
    };
    for dim in DIMENSIONS {
        let Some(v) = q.get(dim) else { continue };
        let (negated, v) = match v.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, v.as_str()),
        };
        let mut vals: Vec<String> = v
            .split(',')
            .map(|x| {
                let x = x.trim();
                if dim == "country" { x.to_ascii_uppercase() } else { x.to_owned() }
            })
            .collect();
        if vals.iter().any(String::is_empty) || vals.len() > 100 {
            return Err(err(
                StatusCode::BAD_REQUEST,
                format!("`{dim}` takes a value, a comma-separated list (up to 100), or either after `!` (is not)"),
            ));
        }
        match (negated, vals.len()) {
            (false, 1) => f.eq.push((dim, vals.remove(0))),
            (false, _) => f.any.push((dim, vals)),
            (true, _) => f.not.push((dim, vals)),
        }
    }
    for k in q.keys() {
        if !DIMENSIONS.contains(&k.as_str()) && !PARAMS.contains(&k.as_str()) {
            return Err(err(
                StatusCode::BAD_REQUEST,
                format!("unknown parameter `{k}`; filters are {}", DIMENSIONS.join(", ")),
            ));
        }
    }
    Ok(f)
}

/// The same filter over the period just before (same length), for `compare=previous`.
fn previous_period(q: &HashMap<String, String>, f: &Filter) -> Result<Option<Filter>, ApiError> {
    match q.get("compare").map(String::as_str) {
        None => Ok(None),
        Some("previous" | "previous_period") => {
            let span = f.to_ms - f.from_ms;
            Ok(Some(Filter {
                from_ms: f.from_ms.saturating_sub(span),
                to_ms: f.from_ms,
                ..f.clone()
            }))
        }
        Some(other) => Err(err(
            StatusCode::BAD_REQUEST,
            format!("`compare` is `previous` (the period of the same length just before), not {other:?}"),
        )),
    }
}

/// A whole-number parameter in `1..=max` (`default` when absent).
fn count_param(q: &HashMap<String, String>, name: &str, max: usize, default: usize) -> Result<usize, ApiError> {
    match q.get(name) {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| err(StatusCode::BAD_REQUEST, format!("`{name}` is 1..{max}"))),
        None => Ok(default),
    }
}

/// Whether the answer is asked for as CSV (`format=csv`); `format=json` is the default.
fn wants_csv(q: &HashMap<String, String>) -> Result<bool, ApiError> {
    match q.get("format").map(String::as_str) {
        None | Some("json") => Ok(false),
        Some("csv") => Ok(true),
        Some(other) => Err(err(StatusCode::BAD_REQUEST, format!("`format` is json or csv, not {other:?}"))),
    }
}

/// Rows as CSV, with a header line; `key` is the first column's name.
fn csv(key: &str, rows: &[crate::analytics::Row]) -> Response {
    let mut out = format!("{key},views,watch_time_s,completions,likes,shares,comments\n");
    for r in rows {
        let k = match &r.key {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        // quote every key: ids may not hold commas at the edge, but be safe for any
        let k = format!("\"{}\"", k.replace('"', "\"\""));
        out.push_str(&format!(
            "{k},{},{},{},{},{},{}\n",
            r.views, r.watch_time_s, r.completions, r.likes, r.shares, r.comments
        ));
    }
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response()
}

/// A blocked video's counts are not shown: asking for one by name is refused, and every
/// other answer leaves blocked videos out of its sums.
fn apply_blocks(api: &Api, f: &mut Filter) -> Result<(), ApiError> {
    let s = api.ingest.read();
    if let Some((_, v)) = f.eq.iter().find(|(d, v)| *d == "video" && s.is_blocked(v)) {
        return Err(err(StatusCode::FORBIDDEN, format!("video {v} is blocked")));
    }
    f.exclude_videos = s.blocked_list();
    Ok(())
}

#[utoipa::path(get, path = "/v1/analytics/timeseries", tag = "analytics", summary = "Views, watch time, completions, likes, shares and comments per bucket", params(crate::apidoc::RangeParams, crate::apidoc::DimensionParams, crate::apidoc::GranularityParams, crate::apidoc::TableParams), security(("api_key" = [])), responses((status = 200, description = "{from, to, granularity, points: [Row], previous?: {from, to, points}}, or CSV", content_type = "application/json"), crate::apidoc::AnalyticsErrors))]
async fn timeseries(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(mut q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    scoped_reader(&api, &headers, &mut q)?;
    let mut f = filter(&q)?;
    let as_csv = wants_csv(&q)?;
    apply_blocks(&api, &mut f)?;
    let g = match q.get("granularity") {
        Some(g) => {
            Granularity::parse(g).ok_or_else(|| err(StatusCode::BAD_REQUEST, "`granularity` is minute, hour or day"))?
        }
        None => Granularity::for_range(f.to_ms - f.from_ms),
    };
    let prev = previous_period(&q, &f)?;
    let fc = f.clone();
    let rows = query(&api, move |a, c| a.timeseries_on(c, &fc, g)).await?;
    if as_csv {
        return Ok(csv("bucket_ms", &rows));
    }
    let mut body = json!({ "from": f.from_ms, "to": f.to_ms, "granularity": g.as_str(), "points": rows });
    if let Some(p) = prev {
        let pc = p.clone();
        let rows = query(&api, move |a, c| a.timeseries_on(c, &pc, g)).await?;
        body["previous"] = json!({ "from": p.from_ms, "to": p.to_ms, "points": rows });
    }
    Ok(Json(body).into_response())
}

/// `GET /v1/analytics/aggregate`: totals over the range (views, unique viewers, watch
/// time, average view duration, completions, likes, shares, comments), optionally with
/// the previous period's.
#[utoipa::path(get, path = "/v1/analytics/aggregate", tag = "analytics", summary = "Totals: views, unique viewers (unfiltered or by video), watch time, average view duration, completions, likes, shares, comments", params(crate::apidoc::RangeParams, crate::apidoc::DimensionParams), security(("api_key" = [])), responses((status = 200, description = "{from, to, views, uniques, watch_time_s, avg_view_duration_s, completions, likes, shares, comments, previous?}", content_type = "application/json"), crate::apidoc::AnalyticsErrors))]
async fn aggregate(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(mut q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    scoped_reader(&api, &headers, &mut q)?;
    let mut f = filter(&q)?;
    if wants_csv(&q)? {
        return Err(err(StatusCode::BAD_REQUEST, "`format=csv` is for tables: timeseries and breakdown"));
    }
    apply_blocks(&api, &mut f)?;
    let prev = previous_period(&q, &f)?;
    let totals = |f: Filter| {
        let api = api.clone();
        async move {
            // unique viewers are kept per video: known for one video or for everything
            let sketchable = f.any.is_empty() && f.not.is_empty() && f.eq.iter().all(|(d, _)| *d == "video");
            let fc = f.clone();
            let (row, uniques) = query(&api, move |a, c| {
                let row = a.totals_on(c, &fc)?;
                let u = if sketchable { Some(a.uniques_on(c, &fc)?.0.round() as u64) } else { None };
                Ok((row, u))
            })
            .await?;
            let avg = if row.views > 0 { row.watch_time_s as f64 / row.views as f64 } else { 0.0 };
            Ok::<_, ApiError>(json!({
                "from": f.from_ms, "to": f.to_ms,
                "views": row.views, "uniques": uniques, "watch_time_s": row.watch_time_s,
                "avg_view_duration_s": (avg * 10.0).round() / 10.0,
                "completions": row.completions, "likes": row.likes, "shares": row.shares, "comments": row.comments,
            }))
        }
    };
    let mut body = totals(f).await?;
    if let Some(p) = prev {
        body["previous"] = totals(p).await?;
    }
    Ok(Json(body))
}

/// `GET /v1/analytics/concurrent?stream=&from=&to=`: concurrent viewers of live streams
/// per minute (the most seen watching in the minute), of one stream or of each.
#[utoipa::path(get, path = "/v1/analytics/concurrent", tag = "analytics", summary = "Concurrent viewers of live streams per minute (the most seen watching in the minute; the last 24 h, in memory)", params(("stream" = Option<String>, Query, description = "One stream (default: each)"), ("from" = Option<String>, Query, description = "Start, as in the other analytics; default `to` less 1 h"), ("to" = Option<String>, Query, description = "End; default now")), security(("api_key" = [])), responses((status = 200, description = "{from, to, streams: [{stream, points: [{minute, watching}]}]}", content_type = "application/json"), crate::apidoc::AnalyticsErrors))]
async fn concurrent(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    platform_reader(&api, &headers, "/v1/analytics/concurrent")?;
    let now = now_ms();
    let to = q.get("to").map(|v| time_param("to", v)).transpose()?.unwrap_or(now);
    let from = q
        .get("from")
        .map(|v| time_param("from", v))
        .transpose()?
        .unwrap_or(to.saturating_sub(3_600_000));
    if from >= to {
        return Err(err(StatusCode::BAD_REQUEST, "`from` must be before `to`"));
    }
    let streams = api.concurrency.series(q.get("stream").map(String::as_str), from / 60_000, to.div_ceil(60_000));
    Ok(Json(json!({
        "from": from, "to": to,
        "streams": streams.into_iter().map(|(s, pts)| json!({
            "stream": s,
            "points": pts.into_iter().map(|(m, w)| json!({"minute": m * 60_000, "watching": w})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })))
}

/// `GET /v1/analytics/uniques?from=&to=&video=`: distinct viewers over any window, of
/// one video or of all, from the stored sketches.
#[utoipa::path(get, path = "/v1/analytics/uniques", tag = "analytics", summary = "Distinct viewers over any window, of one video or of all, from the stored sketches (about 1.6 percent error at high counts)", params(("video" = Option<String>, Query, description = "One video (a channel key must name one of its videos)"), ("from" = Option<String>, Query, description = "Start"), ("to" = Option<String>, Query, description = "End")), security(("api_key" = [])), responses((status = 200, description = "{from, to, video, uniques, sketches, relative_error}", content_type = "application/json"), crate::apidoc::AnalyticsErrors))]
async fn uniques(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if let Scope::Channel(c) = reader(&api, &headers)?.scope {
        // sketches are kept per video: a channel's key names one of its videos
        let owned = q
            .get("video")
            .is_some_and(|v| api.ingest.read().video(v).is_some_and(|t| t.channel == c));
        if !owned {
            return Err(err(
                StatusCode::FORBIDDEN,
                format!("this key reads channel {c} only: name one of its videos with `video`"),
            ));
        }
    }
    let mut f = filter(&q)?;
    if let Some((dim, _)) = f.eq.iter().find(|(d, _)| *d != "video") {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("unique viewers are kept per video: filter by `video` only, not `{dim}`"),
        ));
    }
    apply_blocks(&api, &mut f)?;
    let fc = f.clone();
    let (estimate, sketches) = query(&api, move |a, c| a.uniques_on(c, &fc)).await?;
    Ok(Json(json!({
        "from": f.from_ms,
        "to": f.to_ms,
        "video": f.eq.first().map(|(_, v)| v.clone()),
        "uniques": estimate.round() as u64,
        "sketches": sketches,
        "relative_error": 0.016,
    })))
}

/// `GET /v1/analytics/bots?from=&to=`: events the edges refused as bots, by POP and
/// per minute, so that what was filtered is visible.
#[utoipa::path(get, path = "/v1/analytics/bots", tag = "analytics", summary = "Events edges refused as bots, by POP and per minute (a platform key)", params(("from" = Option<String>, Query, description = "Start"), ("to" = Option<String>, Query, description = "End")), security(("api_key" = [])), responses((status = 200, description = "{from, to, bot_events, by_pop: [{pop, bot_events}], minutes: [{minute, bot_events}]}", content_type = "application/json"), crate::apidoc::AnalyticsErrors))]
async fn bots(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    platform_reader(&api, &headers, "/v1/analytics/bots")?;
    let f = filter(&q)?;
    if let Some((dim, _)) = f.eq.first() {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("bot events are kept per POP and minute: `{dim}` cannot filter them"),
        ));
    }
    let fc = f.clone();
    let (by_pop, series) = query(&api, move |a, c| a.bots_on(c, &fc)).await?;
    let total: u64 = by_pop.iter().map(|(_, n)| n).sum();
    Ok(Json(json!({
        "from": f.from_ms,
        "to": f.to_ms,
        "bot_events": total,
        "by_pop": by_pop.iter().map(|(p, n)| json!({"pop": p, "bot_events": n})).collect::<Vec<_>>(),
        "minutes": series.iter().map(|(m, n)| json!({"minute": m * 60_000, "bot_events": n})).collect::<Vec<_>>(),
    })))
}

#[utoipa::path(get, path = "/v1/analytics/breakdown", tag = "analytics", summary = "The measures per value of one dimension, most viewed first, paged", params(crate::apidoc::BreakdownParams, crate::apidoc::RangeParams, crate::apidoc::DimensionParams, crate::apidoc::TableParams), security(("api_key" = [])), responses((status = 200, description = "{from, to, by, rows: [Row], page, limit, more, previous?}, or CSV", content_type = "application/json"), crate::apidoc::AnalyticsErrors))]
async fn breakdown(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(mut q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    scoped_reader(&api, &headers, &mut q)?;
    let mut f = filter(&q)?;
    let by = q.get("by").ok_or_else(|| {
        err(
            StatusCode::BAD_REQUEST,
            format!("`by` is required: one of {}", DIMENSIONS.join(", ")),
        )
    })?;
    let by = DIMENSIONS.into_iter().find(|d| d == by).ok_or_else(|| {
        err(
            StatusCode::BAD_REQUEST,
            format!("`by` must be one of {}", DIMENSIONS.join(", ")),
        )
    })?;
    let limit = count_param(&q, "limit", 1_000, 20)?;
    let page = count_param(&q, "page", 100_000, 1)?;
    let as_csv = wants_csv(&q)?;
    // blocked videos are left out of every sum, not only of a breakdown by video
    apply_blocks(&api, &mut f)?;
    let prev = previous_period(&q, &f)?;
    let fc = f.clone();
    // one row more than asked tells whether there is a next page
    let mut rows = query(&api, move |a, c| a.breakdown_page_on(c, &fc, by, limit + 1, (page - 1) * limit)).await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    if as_csv {
        return Ok(csv(by, &rows));
    }
    let mut body = json!({ "from": f.from_ms, "to": f.to_ms, "by": by, "rows": rows, "page": page, "limit": limit, "more": more });
    // Unique viewers per row where the sketches allow it: they are kept per video, so a
    // breakdown by video, filtered at most by what a video is (its channel, category).
    let video_attr = |d: &&str| matches!(*d, "video" | "channel" | "category");
    let per_video = by == "video"
        && f.eq.iter().map(|(d, _)| d).all(video_attr)
        && f.any.iter().map(|(d, _)| d).all(video_attr)
        && f.not.iter().map(|(d, _)| d).all(video_attr);
    if per_video {
        let videos: Vec<String> = rows.iter().filter_map(|r| r.key.as_str().map(str::to_owned)).collect();
        let fc = f.clone();
        let uniques = query(&api, move |a, c| a.uniques_per_video_on(c, &fc, &videos)).await?;
        for (i, r) in rows.iter().enumerate() {
            let u = r.key.as_str().and_then(|v| uniques.get(v)).map_or(0, |e| e.round() as u64);
            body["rows"][i]["uniques"] = json!(u);
        }
    }
    if let Some(mut p) = prev {
        // the previous period's figures of the same keys
        let keys: Vec<String> = rows.iter().filter_map(|r| r.key.as_str().map(str::to_owned)).collect();
        if !keys.is_empty() {
            p.any.push((by, keys));
            let pc = p.clone();
            let n = rows.len();
            let prev_rows = query(&api, move |a, c| a.breakdown_page_on(c, &pc, by, n, 0)).await?;
            body["previous"] = json!({ "from": p.from_ms, "to": p.to_ms, "rows": prev_rows });
        } else {
            body["previous"] = json!({ "from": p.from_ms, "to": p.to_ms, "rows": [] });
        }
    }
    Ok(Json(body).into_response())
}
