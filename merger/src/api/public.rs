//! Public reads, as on a video page: a video's all-time counts and a stream's live
//! gauge. The same bodies are pushed to edges (see [`crate::push`]) and streamed over
//! SSE (see [`crate::feeds`]).

use super::docs::Problem;
use super::{Api, ApiError, err};
use crate::cluster::node::Place;
use crate::state::LiveState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tally_delta::now_ms;
use utoipa::ToSchema;

/// A video's all-time counts, or only that it is blocked.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum VideoStats {
    /// A blocked video's counts are not shown anywhere.
    Blocked(BlockedVideo),
    /// The counts.
    Counted(VideoCounts),
}

/// `{video, blocked: true}`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct BlockedVideo {
    /// Video id.
    pub video: String,
    /// Always true.
    pub blocked: bool,
}

/// A video's all-time counts.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct VideoCounts {
    /// Video id.
    pub video: String,
    /// Channel, from the playback tokens.
    pub channel: String,
    /// Category, from the playback tokens.
    pub category: String,
    /// Views, exact.
    pub views: u64,
    /// Unique viewers (HyperLogLog estimate).
    pub uniques: u64,
    /// Watch time in seconds.
    pub watch_time_s: u64,
    /// Completions.
    pub completions: u64,
    /// Users whose latest like event is a like.
    pub likes: i64,
    /// Shares.
    pub shares: u64,
    /// Comments.
    pub comments: u64,
    /// Always false.
    pub blocked: bool,
}

impl VideoStats {
    /// The stats of video `id` in `s`, `None` when nothing is recorded for it.
    pub fn of(s: &LiveState, id: &str) -> Option<VideoStats> {
        if s.is_blocked(id) {
            return Some(VideoStats::Blocked(BlockedVideo {
                video: id.to_owned(),
                blocked: true,
            }));
        }
        let v = s.video(id)?;
        Some(VideoStats::Counted(VideoCounts {
            video: id.to_owned(),
            channel: v.channel.clone(),
            category: v.category.clone(),
            views: v.counts.views,
            uniques: v.uniques.estimate().round() as u64,
            watch_time_s: v.counts.watch_ms / 1000,
            completions: v.counts.completions,
            likes: v.counts.likes,
            shares: v.counts.shares,
            comments: v.counts.comments,
            blocked: false,
        }))
    }

    /// The JSON text (as pushed to edges).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Concurrent viewers of a live stream now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LiveGauge {
    /// Stream id.
    pub stream: String,
    /// Sessions playing.
    pub watching: u64,
    /// Sessions paused or hidden.
    pub connected: u64,
    /// Highest `watching` seen.
    pub peak: u64,
}

impl LiveGauge {
    /// The gauge of `stream` in `s` now (edges silent for `timeout_ms` left out).
    pub fn of(s: &LiveState, stream: &str, timeout_ms: u64) -> LiveGauge {
        let v = s.live(stream, now_ms(), timeout_ms);
        LiveGauge {
            stream: stream.to_owned(),
            watching: v.watching,
            connected: v.connected,
            peak: v.peak,
        }
    }

    /// The JSON text (as pushed to edges and sent over SSE).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A video's all-time counts.
#[utoipa::path(get, path = "/v1/videos/{id}/stats", tag = "public", summary = "A video's all-time counts (public; a blocked video shows only `blocked`)", params(("id" = String, Path, description = "Video id")), responses((status = 200, description = "the counts, or only `blocked`", body = VideoStats), (status = 404, description = "no views recorded", body = Problem), (status = 503, description = "cluster mode: the video's partition is moving between nodes", body = Problem)))]
pub async fn video_stats(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let not_found = || err(StatusCode::NOT_FOUND, format!("no views recorded for video {id}"));
    let body = match &api.cluster {
        None => VideoStats::of(&api.ingest.read(), &id).ok_or_else(not_found)?,
        Some(node) => {
            let forwarded = headers.contains_key(FORWARDED);
            match node
                .place(&id)
                .await
                .map_err(|e| err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
            {
                Place::Local(state) => VideoStats::of(&crate::ingest::read(&state), &id).ok_or_else(not_found)?,
                Place::Remote(addr) if !forwarded => {
                    return forward(&addr, &format!("/v1/videos/{}/stats", urlencoding(&id)), &id).await;
                }
                Place::CatchingUp | Place::Remote(_) | Place::Unowned => {
                    return Err(err(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("the partition of video {id} is moving between nodes; retry in a second"),
                    ));
                }
            }
        }
    };
    Ok(([(header::CACHE_CONTROL, "public, max-age=1")], Json(body)).into_response())
}

/// Marks a request one node forwarded to another (never forwarded again).
const FORWARDED: &str = "x-tally-forwarded";

/// Asks the node at `addr` for `path` (about video or stream `id`) and passes its
/// answer on.
async fn forward(addr: &str, path: &str, id: &str) -> Result<Response, ApiError> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .unwrap_or_default()
    });
    let url = format!("http://{addr}{path}");
    let unavailable = |e: reqwest::Error| {
        err(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the node that owns {id} did not answer ({e}); retry in a second"),
        )
    };
    let r = client
        .get(url)
        .header(FORWARDED, "1")
        .send()
        .await
        .map_err(unavailable)?;
    let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = r.bytes().await.map_err(unavailable)?;
    Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// A path segment with everything but unreserved characters percent-encoded.
fn urlencoding(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A stream's live gauge.
#[utoipa::path(get, path = "/v1/live/{stream}", tag = "public", summary = "Concurrent viewers of a live stream now (public)", params(("stream" = String, Path, description = "Stream id")), responses((status = 200, description = "the gauge", body = LiveGauge), (status = 503, description = "cluster mode: the stream's partition is moving between nodes", body = Problem)))]
pub async fn live(
    State(api): State<Api>,
    Path(stream): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let gauge = match &api.cluster {
        None => LiveGauge::of(&api.ingest.read(), &stream, api.live_timeout_ms),
        Some(node) => match node
            .place(&stream)
            .await
            .map_err(|e| err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        {
            Place::Local(state) => LiveGauge::of(&crate::ingest::read(&state), &stream, api.live_timeout_ms),
            Place::Remote(addr) if !headers.contains_key(FORWARDED) => {
                return forward(&addr, &format!("/v1/live/{}", urlencoding(&stream)), &stream).await;
            }
            Place::CatchingUp | Place::Remote(_) | Place::Unowned => {
                return Err(err(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the partition of stream {stream} is moving between nodes; retry in a second"),
                ));
            }
        },
    };
    Ok(([(header::CACHE_CONTROL, "public, max-age=1")], Json(gauge)).into_response())
}
