//! The merger's OpenAPI document, generated (utoipa) from the `#[utoipa::path]`
//! annotations on the handlers in [`crate::api`], which utoipa-axum registers together
//! with the routes: a route cannot exist without its entry in `/openapi.json`. This
//! module holds the document's frame and the parameter sets several handlers share.

use serde::Deserialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

/// The document's frame; the paths come from the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tally merger",
        description = "Live counts, analytics over every tier, the count push's HTTPS frame ingest and the creator dashboard. Edges (`tally edge`, the Spin app) serve their own document at their `/openapi.json`: beacons (`POST /v1/events`), reads at the edge and the player SDK."
    ),
    components(schemas(Problem, crate::analytics::Row)),
    modifiers(&Security)
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(what.to_string()))
                    .build(),
            )
        };
        c.add_security_scheme(
            "api_key",
            bearer("An API key from `tally keys create` (scope platform or channel:<id>)"),
        );
        c.add_security_scheme("operator", bearer("The operator token (`--operator-token`)"));
        c.add_security_scheme("edge", bearer("The edge's secret (with `x-tally-edge`)"));
    }
}

/// Every error answer: `{"error": "..."}`, naming what to fix.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct Problem {
    /// What went wrong, and what to change.
    pub error: String,
}

/// The error answers every analytics endpoint may give (each a [`Problem`]).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum AnalyticsErrors {
    /// bad parameters, named in the error
    #[response(status = 400)]
    BadRequest(Problem),
    /// no valid API key
    #[response(status = 401)]
    Unauthorized(Problem),
    /// outside the key's scope, or a blocked video
    #[response(status = 403)]
    Forbidden(Problem),
    /// the key is over its rate limit
    #[response(status = 429)]
    TooManyRequests(Problem),
    /// analytics busy; retry
    #[response(status = 503)]
    Busy(Problem),
    /// the query ran over its time and was stopped
    #[response(status = 504)]
    TimedOut(Problem),
}

/// The range of an analytics query.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct RangeParams {
    /// Start: ms since the Unix epoch, an ISO date (`2026-11-20`, UTC) or an RFC 3339
    /// time with its zone (`2026-11-20T09:30:00+01:00`); default `to` less 24 h.
    from: Option<String>,
    /// End (exclusive), as `from`; default now.
    to: Option<String>,
    /// Instead of `from`/`to`: `60m`, `24h`, `7d`, `30d`, `12mo` or `all`, ending now.
    date_range: Option<String>,
    /// `previous`: also the period of the same length just before.
    compare: Option<String>,
}

/// Dimension filters. Each is `v` (is), `v1,v2` (in), `!v` or `!v1,v2` (is not); filters
/// on several dimensions all apply. A channel's API key is narrowed to its channel.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct DimensionParams {
    /// Video id.
    video: Option<String>,
    /// Channel id.
    channel: Option<String>,
    /// Category.
    category: Option<String>,
    /// Two-letter country code.
    country: Option<String>,
    /// mobile, desktop, tablet, tv or other.
    device: Option<String>,
    /// Traffic source.
    source: Option<String>,
    /// Point of presence.
    pop: Option<String>,
}

/// How a table is answered.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct TableParams {
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// A breakdown's dimension and page.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct BreakdownParams {
    /// The dimension to group by: video, channel, category, country, device, source or pop.
    by: String,
    /// Rows per page, 1 to 1000 (default 20).
    limit: Option<usize>,
    /// 1-based page; the answer's `more` says whether another follows.
    page: Option<usize>,
}

/// A time series' bucket size.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct GranularityParams {
    /// minute, hour or day (default: from the range).
    granularity: Option<String>,
}
