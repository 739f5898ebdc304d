//! Query parameters: time ranges (ms, ISO dates, RFC 3339 times, `date_range`
//! shortcuts), dimension filters (is, in, is not), `compare`, paging and `format`. Each
//! bad parameter is a `400` that names it and says what it takes.

use super::{ApiError, err};
use crate::analytics::{DIMENSIONS, Filter};
use axum::http::StatusCode;
use std::collections::HashMap;
use tally_delta::now_ms;

/// Times past this (10000-01-01) are refused rather than truncated into another range.
pub const MAX_TIME_MS: u64 = 253_402_300_800_000;
/// The answer to a time past [`MAX_TIME_MS`].
pub const TIME_RANGE_ERROR: &str = "`from` and `to` must be before the year 10000 (ms since the Unix epoch)";

/// Query parameters the analytics endpoints take besides the dimension filters.
const PARAMS: [&str; 9] = [
    "from",
    "to",
    "date_range",
    "granularity",
    "by",
    "limit",
    "page",
    "format",
    "compare",
];

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
pub fn time_param(k: &str, v: &str) -> Result<u64, ApiError> {
    let bad = || {
        err(
            StatusCode::BAD_REQUEST,
            format!(
                "`{k}` must be ms since the Unix epoch, an ISO date (2026-11-20) or time with its zone (2026-11-20T09:30:00+01:00), not {v:?}"
            ),
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
pub fn filter(q: &HashMap<String, String>) -> Result<Filter, ApiError> {
    let now = now_ms();
    let (from_ms, to_ms) = match q.get("date_range") {
        Some(r) => {
            if q.contains_key("from") || q.contains_key("to") {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    "give `date_range` or `from`/`to`, not both",
                ));
            }
            let span = DATE_RANGES
                .iter()
                .find(|(name, _)| name == r)
                .map(|(_, ms)| *ms)
                .ok_or_else(|| {
                    let names: Vec<&str> = DATE_RANGES.iter().map(|(n, _)| *n).collect();
                    err(
                        StatusCode::BAD_REQUEST,
                        format!("`date_range` is one of {}", names.join(", ")),
                    )
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
                if dim == "country" {
                    x.to_ascii_uppercase()
                } else {
                    x.to_owned()
                }
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
pub fn previous_period(q: &HashMap<String, String>, f: &Filter) -> Result<Option<Filter>, ApiError> {
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
pub fn count_param(q: &HashMap<String, String>, name: &str, max: usize, default: usize) -> Result<usize, ApiError> {
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
pub fn wants_csv(q: &HashMap<String, String>) -> Result<bool, ApiError> {
    match q.get("format").map(String::as_str) {
        None | Some("json") => Ok(false),
        Some("csv") => Ok(true),
        Some(other) => Err(err(
            StatusCode::BAD_REQUEST,
            format!("`format` is json or csv, not {other:?}"),
        )),
    }
}
