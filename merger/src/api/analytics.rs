//! The analytics API (behind API keys): exact top lists, time series, breakdowns and
//! totals over every tier, unique viewers from the sketches, bot events, and concurrent
//! viewers of live streams. Queries run on a small pool of DuckDB connections, bounded
//! in number and time (see [`query`]).

use super::auth::{platform_reader, reader, scoped_reader};
use super::params::{MAX_TIME_MS, TIME_RANGE_ERROR, count_param, filter, previous_period, time_param, wants_csv};
use super::{Api, ApiError, err};
use crate::analytics::{Analytics, DIMENSIONS, Filter, Granularity, Row};
use crate::keys::Scope;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tally_delta::{Country, now_ms};
use utoipa::ToSchema;

/// The range an answer covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Span {
    /// Start (ms since the Unix epoch).
    pub from: u64,
    /// End (ms, exclusive).
    pub to: u64,
}

impl Span {
    /// The range of a query's filter.
    pub fn of(f: &Filter) -> Span {
        Span {
            from: f.from_ms,
            to: f.to_ms,
        }
    }
}

/// One video of a top list.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopItem {
    /// Video id.
    pub video: String,
    /// Views in the window.
    pub views: u64,
}

/// The most viewed videos over a window, exact.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopList {
    /// The country asked for, if any.
    pub country: Option<String>,
    /// The window, rounded out to whole minutes.
    #[serde(flatten)]
    pub span: Span,
    /// How many were asked for.
    pub k: usize,
    /// Always 0: the list is exact.
    pub error_bound: u64,
    /// Always true.
    pub exact: bool,
    /// Most viewed first.
    pub items: Vec<TopItem>,
}

/// Points of a time series over one period.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesPeriod {
    /// The range it covers.
    #[serde(flatten)]
    pub span: Span,
    /// One row per bucket; `key` is the bucket's start (ms).
    pub points: Vec<Row>,
}

/// A time series, and the previous period's when asked for.
#[derive(Debug, Serialize, ToSchema)]
pub struct Timeseries {
    /// The range it covers.
    #[serde(flatten)]
    pub span: Span,
    /// minute, hour or day.
    pub granularity: &'static str,
    /// One row per bucket; `key` is the bucket's start (ms).
    pub points: Vec<Row>,
    /// With `compare=previous`: the period of the same length just before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<SeriesPeriod>,
}

/// Totals over a range.
#[derive(Debug, Serialize, ToSchema)]
pub struct Totals {
    /// The range it covers.
    #[serde(flatten)]
    pub span: Span,
    /// Views.
    pub views: u64,
    /// Unique viewers: known unfiltered or filtered by video only, `null` otherwise.
    pub uniques: Option<u64>,
    /// Watch time in seconds.
    pub watch_time_s: u64,
    /// Watch time per view, seconds (one decimal).
    pub avg_view_duration_s: f64,
    /// Completions.
    pub completions: u64,
    /// Likes net of unlikes.
    pub likes: i64,
    /// Shares.
    pub shares: u64,
    /// Comments.
    pub comments: u64,
    /// With `compare=previous`: the period of the same length just before.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub previous: Option<Box<Totals>>,
}

/// Concurrent viewers of one stream in one minute.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConcurrentPoint {
    /// The minute's start (ms).
    pub minute: u64,
    /// The most seen watching in it.
    pub watching: u64,
}

/// One stream's concurrent viewers per minute.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamSeries {
    /// Stream id.
    pub stream: String,
    /// Per minute, oldest first.
    pub points: Vec<ConcurrentPoint>,
}

/// Concurrent viewers of live streams per minute.
#[derive(Debug, Serialize, ToSchema)]
pub struct Concurrent {
    /// The range it covers.
    #[serde(flatten)]
    pub span: Span,
    /// One series per stream.
    pub streams: Vec<StreamSeries>,
}

/// Distinct viewers over a window.
#[derive(Debug, Serialize, ToSchema)]
pub struct Uniques {
    /// The range it covers.
    #[serde(flatten)]
    pub span: Span,
    /// The video asked for, or `null` for all.
    pub video: Option<String>,
    /// The estimate.
    pub uniques: u64,
    /// Stored sketches merged.
    pub sketches: usize,
    /// The estimate's relative standard error.
    pub relative_error: f64,
}

/// Bot events of one POP.
#[derive(Debug, Serialize, ToSchema)]
pub struct PopBots {
    /// POP id.
    pub pop: String,
    /// Events refused as bots.
    pub bot_events: u64,
}

/// Bot events in one minute.
#[derive(Debug, Serialize, ToSchema)]
pub struct MinuteBots {
    /// The minute's start (ms).
    pub minute: i64,
    /// Events refused as bots.
    pub bot_events: u64,
}

/// Events the edges refused as bots.
#[derive(Debug, Serialize, ToSchema)]
pub struct Bots {
    /// The range it covers.
    #[serde(flatten)]
    pub span: Span,
    /// All of them.
    pub bot_events: u64,
    /// By POP, most first.
    pub by_pop: Vec<PopBots>,
    /// Per minute.
    pub minutes: Vec<MinuteBots>,
}

/// A breakdown row, with its unique viewers where the sketches allow.
#[derive(Debug, Serialize, ToSchema)]
pub struct BreakdownRow {
    /// The dimension value and its measures.
    #[serde(flatten)]
    pub row: Row,
    /// Unique viewers (breakdowns by video filtered at most by video, channel, category).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uniques: Option<u64>,
}

/// The same keys over the previous period.
#[derive(Debug, Serialize, ToSchema)]
pub struct BreakdownPeriod {
    /// The range it covers.
    #[serde(flatten)]
    pub span: Span,
    /// The rows of the current page's keys.
    pub rows: Vec<Row>,
}

/// The measures per value of one dimension, most viewed first, paged.
#[derive(Debug, Serialize, ToSchema)]
pub struct Breakdown {
    /// The range it covers.
    #[serde(flatten)]
    pub span: Span,
    /// The dimension.
    pub by: &'static str,
    /// This page's rows.
    pub rows: Vec<BreakdownRow>,
    /// 1-based page.
    pub page: usize,
    /// Rows per page.
    pub limit: usize,
    /// Whether another page follows.
    pub more: bool,
    /// With `compare=previous`: the same keys over the period just before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<BreakdownPeriod>,
}

/// The parameters of `/v1/top`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TopQuery {
    /// Two-letter country code.
    country: Option<String>,
    /// Start, ms since the Unix epoch (default: an hour ago).
    from: Option<u64>,
    /// End, ms since the Unix epoch (default: a minute from now).
    to: Option<u64>,
    /// How many, 1 to 1000 (default 10).
    k: Option<usize>,
}

/// The most viewed videos over a window, exact.
#[utoipa::path(get, path = "/v1/top", tag = "analytics", summary = "The most viewed videos over a window, exact", params(TopQuery), security(("api_key" = [])), responses((status = 200, description = "the list", body = TopList), super::docs::AnalyticsErrors))]
pub async fn top(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(q): Query<TopQuery>,
) -> Result<Json<TopList>, ApiError> {
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
    let live: Option<Vec<TopItem>> = {
        let s = api.ingest.read();
        match s.oldest_minute() {
            Some(oldest) if from_min < oldest => None,
            _ => Some(
                s.top(country, from_min, to_min, k + s.blocked().count())
                    .into_iter()
                    .filter(|(v, _)| !s.is_blocked(v))
                    .take(k)
                    .map(|(video, views)| TopItem { video, views })
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
                .map(|r| TopItem {
                    video: key_text(r.key),
                    views: r.views,
                })
                .collect()
        }
    };
    Ok(Json(TopList {
        country: country.map(|c| c.to_string()),
        span: Span {
            from: from_min as u64 * 60_000,
            to: to_min as u64 * 60_000,
        },
        k,
        error_bound: 0,
        exact: true,
        items,
    }))
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

/// A row's key as text (dimension values are strings; bucket times are numbers).
fn key_text(key: serde_json::Value) -> String {
    match key {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Rows as CSV, with a header line; `key` is the first column's name.
fn csv(key: &str, rows: &[Row]) -> Response {
    let mut out = format!("{key},views,watch_time_s,completions,likes,shares,comments\n");
    for r in rows {
        let k = key_text(r.key.clone());
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

/// The measures per time bucket.
#[utoipa::path(get, path = "/v1/analytics/timeseries", tag = "analytics", summary = "Views, watch time, completions, likes, shares and comments per bucket", params(super::docs::RangeParams, super::docs::DimensionParams, super::docs::GranularityParams, super::docs::TableParams), security(("api_key" = [])), responses((status = 200, description = "the series, or CSV with `format=csv`", body = Timeseries), super::docs::AnalyticsErrors))]
pub async fn timeseries(
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
    let previous = match prev {
        Some(p) => {
            let pc = p.clone();
            let points = query(&api, move |a, c| a.timeseries_on(c, &pc, g)).await?;
            Some(SeriesPeriod {
                span: Span::of(&p),
                points,
            })
        }
        None => None,
    };
    Ok(Json(Timeseries {
        span: Span::of(&f),
        granularity: g.as_str(),
        points: rows,
        previous,
    })
    .into_response())
}

/// `GET /v1/analytics/aggregate`: totals over the range (views, unique viewers, watch
/// time, average view duration, completions, likes, shares, comments), optionally with
/// the previous period's.
#[utoipa::path(get, path = "/v1/analytics/aggregate", tag = "analytics", summary = "Totals: views, unique viewers (unfiltered or by video), watch time, average view duration, completions, likes, shares, comments", params(super::docs::RangeParams, super::docs::DimensionParams), security(("api_key" = [])), responses((status = 200, description = "the totals", body = Totals), super::docs::AnalyticsErrors))]
pub async fn aggregate(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(mut q): Query<HashMap<String, String>>,
) -> Result<Json<Totals>, ApiError> {
    scoped_reader(&api, &headers, &mut q)?;
    let mut f = filter(&q)?;
    if wants_csv(&q)? {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "`format=csv` is for tables: timeseries and breakdown",
        ));
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
                let u = if sketchable {
                    Some(a.uniques_on(c, &fc)?.0.round() as u64)
                } else {
                    None
                };
                Ok((row, u))
            })
            .await?;
            let avg = if row.views > 0 {
                row.watch_time_s as f64 / row.views as f64
            } else {
                0.0
            };
            Ok::<_, ApiError>(Totals {
                span: Span::of(&f),
                views: row.views,
                uniques,
                watch_time_s: row.watch_time_s,
                avg_view_duration_s: (avg * 10.0).round() / 10.0,
                completions: row.completions,
                likes: row.likes,
                shares: row.shares,
                comments: row.comments,
                previous: None,
            })
        }
    };
    let mut body = totals(f).await?;
    if let Some(p) = prev {
        body.previous = Some(Box::new(totals(p).await?));
    }
    Ok(Json(body))
}

/// `GET /v1/analytics/concurrent?stream=&from=&to=`: concurrent viewers of live streams
/// per minute (the most seen watching in the minute), of one stream or of each.
#[utoipa::path(get, path = "/v1/analytics/concurrent", tag = "analytics", summary = "Concurrent viewers of live streams per minute (the most seen watching in the minute; the last 24 h, in memory)", params(("stream" = Option<String>, Query, description = "One stream (default: each)"), ("from" = Option<String>, Query, description = "Start, as in the other analytics; default `to` less 1 h"), ("to" = Option<String>, Query, description = "End; default now")), security(("api_key" = [])), responses((status = 200, description = "the series", body = Concurrent), super::docs::AnalyticsErrors))]
pub async fn concurrent(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Concurrent>, ApiError> {
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
    let streams = api
        .concurrency
        .series(q.get("stream").map(String::as_str), from / 60_000, to.div_ceil(60_000));
    Ok(Json(Concurrent {
        span: Span { from, to },
        streams: streams
            .into_iter()
            .map(|(stream, pts)| StreamSeries {
                stream,
                points: pts
                    .into_iter()
                    .map(|(m, watching)| ConcurrentPoint {
                        minute: m * 60_000,
                        watching,
                    })
                    .collect(),
            })
            .collect(),
    }))
}

/// `GET /v1/analytics/uniques?from=&to=&video=`: distinct viewers over any window, of
/// one video or of all, from the stored sketches.
#[utoipa::path(get, path = "/v1/analytics/uniques", tag = "analytics", summary = "Distinct viewers over any window, of one video or of all, from the stored sketches (about 1.6 percent error at high counts)", params(("video" = Option<String>, Query, description = "One video (a channel key must name one of its videos)"), ("from" = Option<String>, Query, description = "Start"), ("to" = Option<String>, Query, description = "End")), security(("api_key" = [])), responses((status = 200, description = "the estimate", body = Uniques), super::docs::AnalyticsErrors))]
pub async fn uniques(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Uniques>, ApiError> {
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
    if let Some((dim, _)) = f.any.iter().chain(&f.not).next() {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("unique viewers are kept per video: name one video (`video=<id>`), not a list or `!` for `{dim}`"),
        ));
    }
    apply_blocks(&api, &mut f)?;
    let fc = f.clone();
    let (estimate, sketches) = query(&api, move |a, c| a.uniques_on(c, &fc)).await?;
    Ok(Json(Uniques {
        span: Span::of(&f),
        video: f.eq.first().map(|(_, v)| v.clone()),
        uniques: estimate.round() as u64,
        sketches,
        relative_error: 0.016,
    }))
}

/// `GET /v1/analytics/bots?from=&to=`: events the edges refused as bots, by POP and
/// per minute, so that what was filtered is visible.
#[utoipa::path(get, path = "/v1/analytics/bots", tag = "analytics", summary = "Events edges refused as bots, by POP and per minute (a platform key)", params(("from" = Option<String>, Query, description = "Start"), ("to" = Option<String>, Query, description = "End")), security(("api_key" = [])), responses((status = 200, description = "the bot events", body = Bots), super::docs::AnalyticsErrors))]
pub async fn bots(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Bots>, ApiError> {
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
    Ok(Json(Bots {
        span: Span::of(&f),
        bot_events: total,
        by_pop: by_pop
            .into_iter()
            .map(|(pop, bot_events)| PopBots { pop, bot_events })
            .collect(),
        minutes: series
            .into_iter()
            .map(|(m, bot_events)| MinuteBots {
                minute: m * 60_000,
                bot_events,
            })
            .collect(),
    }))
}

/// The measures per value of one dimension, paged.
#[utoipa::path(get, path = "/v1/analytics/breakdown", tag = "analytics", summary = "The measures per value of one dimension, most viewed first, paged", params(super::docs::BreakdownParams, super::docs::RangeParams, super::docs::DimensionParams, super::docs::TableParams), security(("api_key" = [])), responses((status = 200, description = "the page, or CSV with `format=csv`", body = Breakdown), super::docs::AnalyticsErrors))]
pub async fn breakdown(
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
    let mut rows = query(&api, move |a, c| {
        a.breakdown_page_on(c, &fc, by, limit + 1, (page - 1) * limit)
    })
    .await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    if as_csv {
        return Ok(csv(by, &rows));
    }
    // Unique viewers per row where the sketches allow it: they are kept per video, so a
    // breakdown by video, filtered at most by what a video is (its channel, category).
    let video_attr = |d: &&str| matches!(*d, "video" | "channel" | "category");
    let per_video = by == "video"
        && f.eq.iter().map(|(d, _)| d).all(video_attr)
        && f.any.iter().map(|(d, _)| d).all(video_attr)
        && f.not.iter().map(|(d, _)| d).all(video_attr);
    let uniques = if per_video {
        let videos: Vec<String> = rows.iter().filter_map(|r| r.key.as_str().map(str::to_owned)).collect();
        let fc = f.clone();
        Some(query(&api, move |a, c| a.uniques_per_video_on(c, &fc, &videos)).await?)
    } else {
        None
    };
    let previous = match prev {
        Some(mut p) => {
            // the previous period's figures of the same keys
            let keys: Vec<String> = rows.iter().filter_map(|r| r.key.as_str().map(str::to_owned)).collect();
            let rows = if keys.is_empty() {
                Vec::new()
            } else {
                p.any.push((by, keys));
                let pc = p.clone();
                let n = rows.len();
                query(&api, move |a, c| a.breakdown_page_on(c, &pc, by, n, 0)).await?
            };
            Some(BreakdownPeriod {
                span: Span::of(&p),
                rows,
            })
        }
        None => None,
    };
    let rows = rows
        .into_iter()
        .map(|row| {
            let uniques = uniques
                .as_ref()
                .map(|u| row.key.as_str().and_then(|v| u.get(v)).map_or(0, |e| e.round() as u64));
            BreakdownRow { row, uniques }
        })
        .collect();
    Ok(Json(Breakdown {
        span: Span::of(&f),
        by,
        rows,
        page,
        limit,
        more,
        previous,
    })
    .into_response())
}
