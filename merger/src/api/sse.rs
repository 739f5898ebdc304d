//! The live gauge as server-sent events: every client of a stream shares one feed
//! computed once a second (see [`crate::feeds`]), and a stream sends the current gauge
//! and then only changes.

use super::docs::Problem;
use super::{Api, ApiError, err};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use std::convert::Infallible;
use std::net::SocketAddr;
use tally_link::listener::STREAMS_PER_ADDRESS;

/// A stream's live gauge as server-sent events.
#[utoipa::path(get, path = "/v1/live/{stream}/events", tag = "public", summary = "The live gauge as server-sent events, at most one a second (public)", params(("stream" = String, Path, description = "Stream id")), responses((status = 200, description = "text/event-stream of {stream, watching, connected, peak}", content_type = "text/event-stream"), (status = 429, description = "this address holds too many streams", body = Problem), (status = 503, description = "too many streams followed", body = Problem)))]
pub async fn live_sse(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(stream): Path<String>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    if stream.is_empty() || stream.len() > 128 {
        return Err(err(StatusCode::BAD_REQUEST, "stream id must be 1..=128 bytes"));
    }
    // the slot goes with the stream and comes back when the client leaves
    let slot = api.sse_slots.take(&peer.ip().to_string()).ok_or_else(|| {
        err(
            StatusCode::TOO_MANY_REQUESTS,
            format!("this address holds {STREAMS_PER_ADDRESS} live streams already; close one"),
        )
    })?;
    // every client of a stream shares one feed (see `feeds`)
    let rx = api.feeds.follow(&stream).ok_or_else(|| {
        err(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live streams are followed on this merger; retry later",
        )
    })?;
    // The current gauge first (if the feed has one), then each change: after an event
    // the stream waits for the feed to change, so an idle stream sends nothing.
    let s = futures_util::stream::unfold((rx, true, slot), |(mut rx, first, slot)| async move {
        if !first {
            rx.changed().await.ok()?;
        }
        loop {
            let body = rx.borrow_and_update().clone();
            if let Some(body) = body {
                let ev = Event::default().event("live").data(body);
                return Some((Ok(ev), (rx, false, slot)));
            }
            rx.changed().await.ok()?;
        }
    });
    Ok(Sse::new(s).keep_alive(KeepAlive::default()))
}
