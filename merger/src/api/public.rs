//! Public reads, as on a video page: a video's all-time counts and a stream's live
//! gauge. The same bodies are pushed to edges (see [`crate::push`]) and streamed over
//! SSE (see [`crate::feeds`]).

use super::docs::Problem;
use super::{Api, ApiError, err};
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
#[utoipa::path(get, path = "/v1/videos/{id}/stats", tag = "public", summary = "A video's all-time counts (public; a blocked video shows only `blocked`)", params(("id" = String, Path, description = "Video id")), responses((status = 200, description = "the counts, or only `blocked`", body = VideoStats), (status = 404, description = "no views recorded", body = Problem)))]
pub async fn video_stats(State(api): State<Api>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let body = VideoStats::of(&api.ingest.read(), &id)
        .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("no views recorded for video {id}")))?;
    Ok(([(header::CACHE_CONTROL, "public, max-age=1")], Json(body)).into_response())
}

/// A stream's live gauge.
#[utoipa::path(get, path = "/v1/live/{stream}", tag = "public", summary = "Concurrent viewers of a live stream now (public)", params(("stream" = String, Path, description = "Stream id")), responses((status = 200, description = "the gauge", body = LiveGauge)))]
pub async fn live(State(api): State<Api>, Path(stream): Path<String>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "public, max-age=1")],
        Json(LiveGauge::of(&api.ingest.read(), &stream, api.live_timeout_ms)),
    )
}
