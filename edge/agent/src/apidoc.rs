//! The edge's OpenAPI document (`GET /openapi.json`), generated (utoipa) from the
//! `#[utoipa::path]` annotations on the handlers in [`crate::http`], registered with the
//! routes by utoipa-axum. The schemas here describe what a beacon carries.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The document's frame; the paths come from the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tally edge",
        description = "What players and pages talk to at a POP (`tally edge`; the Spin app serves the same /v1/events, /v1/videos/{id}/stats and SDK): beacons in, public counts pushed by the mergers out, and the player SDK. The merger documents its own API at its /openapi.json."
    ),
    components(schemas(Beacon, BeaconEvent, Answer, Refusal, Problem)),
    modifiers(&Security)
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.components.get_or_insert_with(Default::default).add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The agent's `admin_token`".to_string()))
                    .build(),
            ),
        );
    }
}

/// A beacon: `{"events": [...]}` (or the bare array), as `application/json` or
/// `text/plain` (what `navigator.sendBeacon` sends).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Beacon {
    /// Up to 500 events, 64 KiB in all.
    events: Vec<BeaconEvent>,
}

/// One event of a beacon.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BeaconEvent {
    /// Unique per event (a resend keeps it: duplicates count once).
    event_id: String,
    /// The viewer session; must be the playback token's `sid`.
    session_id: String,
    /// Signed-in user, if any.
    user_id: Option<String>,
    /// The video.
    video_id: String,
    /// play, heartbeat, pause, resume, complete, leave, like, unlike, share or comment.
    #[schema(rename = "type")]
    kind: String,
    /// Event time, ms since the Unix epoch.
    ts: u64,
    /// Playback position, seconds.
    position_s: Option<f64>,
    /// mobile, desktop, tablet, tv (else from the User-Agent).
    device: Option<String>,
    /// Traffic source.
    source: Option<String>,
    /// The playback token: an HS256 JWT with vid, ch, cat, live, sid, iat, exp.
    token: String,
}

/// The answer to a beacon.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Answer {
    /// Events taken (duplicates included); with `202` they are durable.
    accepted: u32,
    /// Of those, events seen before (counted once).
    duplicates: u32,
    /// Events refused, each with its reason.
    rejected: Vec<Refusal>,
    /// Set when nothing was accepted.
    error: Option<String>,
}

/// One refused event.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Refusal {
    /// Its position in the beacon.
    index: u32,
    /// Why (e.g. `token expired`, `token is for a different session`, `bot`).
    reason: String,
}

/// Every error answer: `{"error": "..."}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Problem {
    /// What went wrong, and what to change.
    error: String,
}
