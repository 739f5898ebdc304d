//! The agent's HTTP endpoint: beacons in, counts out (from the pushed cache).

use crate::Agent;
use crate::pool::IngestFailure;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tally_collector::route;
use tally_collector::{RequestFacts, answer};
use tower_http::cors::{Any, CorsLayer};

/// How long a read waits for the mergers' first snapshot of something new.
const FIRST_SNAPSHOT_WAIT: Duration = Duration::from_secs(3);
/// Largest component accepted by `POST /admin/component`.
const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// An error answer: a status and `{"error": "..."}`.
pub struct ApiError(StatusCode, String, Option<u64>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if let Some(s) = self.2
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

fn err(code: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(code, msg.into(), None)
}

fn retry(code: StatusCode, msg: impl Into<String>, after_s: u64) -> ApiError {
    ApiError(code, msg.into(), Some(after_s))
}

/// The router, and the OpenAPI document generated from its handlers.
pub fn router(agent: Arc<Agent>) -> Router {
    use utoipa::OpenApi;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE])
        .max_age(Duration::from_secs(86_400));
    let (router, doc) = OpenApiRouter::with_openapi(crate::apidoc::ApiDoc::openapi())
        .routes(routes!(events))
        .routes(routes!(video_stats))
        .routes(routes!(live))
        .routes(routes!(live_sse))
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(swap_component))
        .routes(routes!(sdk_js))
        .routes(routes!(sdk_mjs))
        .split_for_parts();
    let doc: Arc<str> = Arc::from(doc.to_pretty_json().unwrap_or_default());
    router
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], doc.to_string()) }
            }),
        )
        .fallback(|| async { err(StatusCode::NOT_FOUND, "no such endpoint; see /openapi.json") })
        .layer(cors)
        .with_state(agent)
}

/// `GET /tally.js`: the player SDK (script tag).
#[utoipa::path(get, path = "/tally.js", tag = "sdk", summary = "The player SDK, script-tag form (sets window.Tally)", responses((status = 200, description = "JavaScript", content_type = "text/javascript")))]
async fn sdk_js() -> Response {
    sdk("/tally.js")
}

/// `GET /tally.mjs`: the player SDK (ES module).
#[utoipa::path(get, path = "/tally.mjs", tag = "sdk", summary = "The player SDK, ES module", responses((status = 200, description = "JavaScript", content_type = "text/javascript")))]
async fn sdk_mjs() -> Response {
    sdk("/tally.mjs")
}

/// An SDK file, cacheable for an hour.
fn sdk(path: &str) -> Response {
    match tally_sdk::asset(path) {
        Some((body, content_type)) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            body,
        )
            .into_response(),
        None => err(StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

/// The client address in a forwarding header: its right-most entry, the one the trusted
/// proxy in front of the agent appended (entries to its left are written by the client
/// and would let it pick its own rate-limit bucket).
fn client_addr(header: &str) -> &str {
    header.rsplit(',').next().unwrap_or("").trim()
}

/// The client's address: the trusted header's right-most hop when configured, else the
/// peer.
fn client_of(a: &Agent, headers: &HeaderMap, peer: SocketAddr) -> String {
    let client = match &a.cfg.client_addr_header {
        Some(h) => client_addr(header_str(headers, h)).to_owned(),
        None => String::new(),
    };
    if client.is_empty() {
        peer.ip().to_string()
    } else {
        client
    }
}

/// Admits a read of a video or stream: refuses junk ids ([`check_id`]) and a client that
/// asks for too many videos or streams this edge does not follow yet (each would become
/// interest sent to the mergers).
fn admit_read(a: &Agent, headers: &HeaderMap, peer: SocketAddr, id: &str, stream: bool) -> Result<(), ApiError> {
    check_id(if stream { "stream" } else { "video" }, id)?;
    if a.cache.follows(id, stream) {
        return Ok(());
    }
    a.limits
        .check_new_interest(&client_of(a, headers, peer))
        .map_err(|why| retry(StatusCode::TOO_MANY_REQUESTS, why.to_string(), 60))
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[utoipa::path(post, path = "/v1/events", tag = "beacons", summary = "Beacons from players: counted exactly once, answered 202 once durable", request_body(content = crate::apidoc::Beacon, content_type = "text/plain", description = "JSON, as text/plain (sendBeacon) or application/json"), responses((status = 202, description = "accepted (some events may be refused, each with its reason)", body = crate::apidoc::Answer), (status = 400, description = "nothing accepted, or malformed JSON", body = crate::apidoc::Answer), (status = 403, description = "the request came from a bot: every event refused with the reason `bot`", body = crate::apidoc::Answer), (status = 413, description = "body or batch over the limit", body = crate::apidoc::Problem), (status = 415, description = "another media type", body = crate::apidoc::Problem), (status = 429, description = "over a rate limit (Retry-After)", body = crate::apidoc::Problem), (status = 503, description = "the edge cannot make beacons durable now (Retry-After)", body = crate::apidoc::Problem)))]
async fn events(
    State(a): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let arrival_ms = crate::now_ms();
    a.metrics.beacons.fetch_add(1, Ordering::Relaxed);
    if let Some(why) = answer::refused_media_type(header_str(&headers, "content-type")) {
        return Err(a.refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, why));
    }
    if a.spool_full.load(Ordering::Relaxed) {
        return Err(a.refuse_retry(
            StatusCode::SERVICE_UNAVAILABLE,
            "the edge's spool is full (its mergers are not acknowledging); retry later",
            5,
        ));
    }
    let limit = a.cfg.max_body_bytes as usize;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return Err(a.refuse(StatusCode::PAYLOAD_TOO_LARGE, answer::body_too_large(limit)));
        }
    };
    let client = client_of(&a, &headers, peer);
    let sessions = route::sessions(&bytes);
    if let Err(why) = a.limits.check(&client, &sessions) {
        a.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        return Err(a.refuse_retry(StatusCode::TOO_MANY_REQUESTS, why.to_string(), 1));
    }
    let user_agent = header_str(&headers, "user-agent");
    let bot = a
        .bots
        .classify(user_agent, |name| headers.get(name).and_then(|v| v.to_str().ok()))
        .or_else(|| a.limits.bursting(&sessions).then(|| "burst".to_owned()));
    if let Some(kind) = &bot {
        a.metrics.bot(kind);
    }
    let facts = RequestFacts {
        country: header_str(&headers, &a.cfg.country_header).to_owned(),
        client_addr: client,
        user_agent: user_agent.to_owned(),
        arrival_ms,
        bot,
    };
    let (reply, tickets) = a.pool.ingest(&bytes, &sessions, &facts);
    let outcome = match reply {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            let code = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            return Err(a.refuse(code, e.to_string()));
        }
        Err(IngestFailure::Wal(e)) => {
            return Err(a.refuse_retry(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the edge cannot make beacons durable ({e}); retry later"),
                5,
            ));
        }
        Err(e @ (IngestFailure::Trap(_) | IngestFailure::NoInstance(_))) => {
            return Err(a.refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
        }
    };
    // 202 means durable: wait for the write-ahead log's fsync (shared with every beacon
    // written before it).
    if !tickets.is_empty() {
        for t in tickets {
            if let Err(e) = t.wait().await {
                return Err(a.refuse_retry(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the edge could not make this beacon durable ({e}); retry it"),
                    1,
                ));
            }
        }
    }
    a.metrics
        .events_accepted
        .fetch_add(outcome.accepted as u64, Ordering::Relaxed);
    a.metrics
        .events_rejected
        .fetch_add(outcome.rejected.len() as u64, Ordering::Relaxed);
    a.metrics
        .bytes_accepted
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    let (code, body) = outcome.answer();
    if code != 202 {
        a.metrics.refused.fetch_add(1, Ordering::Relaxed);
    }
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    Ok((code, Json(body)).into_response())
}

impl Agent {
    fn refuse(&self, code: StatusCode, msg: impl Into<String>) -> ApiError {
        self.metrics.refused.fetch_add(1, Ordering::Relaxed);
        err(code, msg)
    }

    fn refuse_retry(&self, code: StatusCode, msg: impl Into<String>, after_s: u64) -> ApiError {
        self.metrics.refused.fetch_add(1, Ordering::Relaxed);
        retry(code, msg, after_s)
    }
}

fn json_body(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=1"),
        ],
        body,
    )
        .into_response()
}

/// Longest video or stream id a read may name.
const MAX_ID_BYTES: usize = 128;

/// Refuses ids no video can have (empty, long, control characters or spaces), before
/// they are registered as interest: a scraper cycling through junk ids must not fill
/// the interest table or grow the interest message.
fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("{what} id must be 1..={MAX_ID_BYTES} bytes without spaces or control characters"),
        ));
    }
    Ok(())
}

#[utoipa::path(get, path = "/v1/videos/{id}/stats", tag = "reads", summary = "A video's all-time counts, as the merger pushed them", params(("id" = String, Path, description = "Video id")), responses((status = 200, description = "the merger's stats JSON", content_type = "application/json"), (status = 400, description = "not a video id", body = crate::apidoc::Problem), (status = 404, description = "no views recorded", body = crate::apidoc::Problem), (status = 429, description = "this address asks for too many new videos (Retry-After)", body = crate::apidoc::Problem), (status = 503, description = "no count yet (Retry-After)", body = crate::apidoc::Problem)))]
async fn video_stats(
    State(a): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admit_read(&a, &headers, peer, &id, false)?;
    let mut snapshots = a.cache.snapshots();
    let deadline = tokio::time::Instant::now() + FIRST_SNAPSHOT_WAIT;
    loop {
        match a.cache.video(&id) {
            Some(Some(body)) => return Ok(json_body(body)),
            Some(None) => return Err(err(StatusCode::NOT_FOUND, format!("no views recorded for video {id}"))),
            None => {}
        }
        if tokio::time::timeout_at(deadline, snapshots.changed()).await.is_err() {
            return Err(retry(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("counts for video {id} have not reached this edge yet (is a merger connected?); retry"),
                1,
            ));
        }
    }
}

async fn stream_rx(a: &Agent, stream: &str) -> Result<tokio::sync::watch::Receiver<Option<String>>, ApiError> {
    let mut rx = a
        .cache
        .stream(stream)
        .ok_or_else(|| err(StatusCode::SERVICE_UNAVAILABLE, "this edge follows too many streams"))?;
    if rx.borrow().is_none() {
        let deadline = tokio::time::Instant::now() + FIRST_SNAPSHOT_WAIT;
        while rx.borrow_and_update().is_none() {
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return Err(retry(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("live counts for stream {stream} have not reached this edge yet; retry"),
                    1,
                ));
            }
        }
    }
    Ok(rx)
}

#[utoipa::path(get, path = "/v1/live/{stream}", tag = "reads", summary = "Concurrent viewers of a live stream now", params(("stream" = String, Path, description = "Stream id")), responses((status = 200, description = "{stream, watching, connected, peak}", content_type = "application/json"), (status = 429, description = "too many new streams from this address", body = crate::apidoc::Problem), (status = 503, description = "no count yet", body = crate::apidoc::Problem)))]
async fn live(
    State(a): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(stream): Path<String>,
) -> Result<Response, ApiError> {
    admit_read(&a, &headers, peer, &stream, true)?;
    let rx = stream_rx(&a, &stream).await?;
    let body = rx.borrow().clone().unwrap_or_default();
    Ok(json_body(body))
}

#[utoipa::path(get, path = "/v1/live/{stream}/events", tag = "reads", summary = "The live gauge as server-sent events, at most one a second", params(("stream" = String, Path, description = "Stream id")), responses((status = 200, description = "text/event-stream", content_type = "text/event-stream"), (status = 429, description = "this address holds too many streams", body = crate::apidoc::Problem)))]
async fn live_sse(
    State(a): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(stream): Path<String>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    admit_read(&a, &headers, peer, &stream, true)?;
    // the slot goes with the stream and comes back when the client leaves
    let slot = a.sse_slots.take(&client_of(&a, &headers, peer)).ok_or_else(|| {
        err(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "this address holds {} live streams already; close one",
                tally_link::listener::STREAMS_PER_ADDRESS
            ),
        )
    })?;
    let mut rx = a
        .cache
        .stream(&stream)
        .ok_or_else(|| err(StatusCode::SERVICE_UNAVAILABLE, "this edge follows too many streams"))?;
    rx.mark_changed();
    let events = futures_util::stream::unfold((rx, a, stream, false, slot), |(mut rx, a, stream, sent, slot)| async move {
        if sent {
            // Coalesce: at most one update a second, whatever the merger sends.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        loop {
            rx.changed().await.ok()?;
            a.cache.renew_stream(&stream);
            let v = rx.borrow_and_update().clone();
            if let Some(body) = v {
                return Some((Ok(Event::default().event("live").data(body)), (rx, a, stream, true, slot)));
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

#[utoipa::path(get, path = "/healthz", tag = "operations", summary = "Status: POP, spool, mergers", responses((status = 200, description = "{status, pop, edge, spool_frames, spool_full, mergers}", content_type = "application/json")))]
async fn healthz(State(a): State<Arc<Agent>>) -> Json<serde_json::Value> {
    let mergers: Vec<_> = a
        .shipping
        .status
        .iter()
        .map(|m| json!({ "addr": m.addr, "connected": m.connected.load(Ordering::Relaxed) }))
        .collect();
    Json(json!({
        "status": "ok", "pop": a.cfg.pop_id, "edge": a.cfg.edge_id,
        "spool_frames": a.spool.pending(), "spool_full": a.spool_full.load(Ordering::Relaxed),
        "mergers": mergers,
    }))
}

#[utoipa::path(get, path = "/metrics", tag = "operations", summary = "Prometheus metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(a): State<Arc<Agent>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&a),
    )
        .into_response()
}

#[utoipa::path(post, path = "/admin/component", tag = "operations", summary = "Swaps collector.wasm while running (the body is the component)", security(("admin" = [])), request_body(content = Vec<u8>, content_type = "application/wasm"), responses((status = 200, description = "swapped", content_type = "application/json"), (status = 401, description = "admin token required", body = crate::apidoc::Problem), (status = 403, description = "no admin token configured", body = crate::apidoc::Problem), (status = 422, description = "the component does not compile or instantiate; nothing changed", body = crate::apidoc::Problem)))]
async fn swap_component(
    State(a): State<Arc<Agent>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(token) = &a.cfg.admin_token else {
        return Err(err(StatusCode::FORBIDDEN, "no admin token is configured on this agent"));
    };
    let given = header_str(&headers, "authorization")
        .strip_prefix("Bearer ")
        .unwrap_or("");
    if given.is_empty() || !tally_link::secret::same(given, token) {
        return Err(err(
            StatusCode::UNAUTHORIZED,
            "Authorization: Bearer <admin token> required",
        ));
    }
    let bytes = axum::body::to_bytes(body, MAX_COMPONENT_BYTES)
        .await
        .map_err(|_| err(StatusCode::PAYLOAD_TOO_LARGE, "component larger than 64 MiB"))?;
    if bytes.is_empty() {
        return Err(err(StatusCode::BAD_REQUEST, "send the component's bytes as the body"));
    }
    let n = bytes.len();
    a.swap_component(bytes.to_vec())
        .await
        .map_err(|e| err(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    Ok(Json(json!({ "swapped": true, "bytes": n })))
}

#[cfg(test)]
mod tests {
    use super::client_addr;

    #[test]
    fn the_client_address_is_the_hop_the_trusted_proxy_added() {
        assert_eq!(client_addr("203.0.113.9"), "203.0.113.9");
        // a client that writes its own X-Forwarded-For cannot choose its address
        assert_eq!(client_addr("1.1.1.1, 2.2.2.2 , 198.51.100.7"), "198.51.100.7");
        assert_eq!(client_addr(""), "");
    }
}
