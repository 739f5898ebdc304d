//! Who may call what: API keys for the analytics and top lists (narrowed to a channel
//! for a channel's key), the operator token for operator endpoints, and the bearer
//! header both arrive in.

use super::{Api, ApiError, err};
use crate::keys::{Denied, Grant, Scope};
use axum::http::{HeaderMap, StatusCode, header};
use std::collections::HashMap;

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Checks the request's API key (see [`crate::keys`]).
pub fn reader(api: &Api, headers: &HeaderMap) -> Result<Grant, ApiError> {
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
pub fn scoped_reader(api: &Api, headers: &HeaderMap, q: &mut HashMap<String, String>) -> Result<Grant, ApiError> {
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
pub fn platform_reader(api: &Api, headers: &HeaderMap, what: &str) -> Result<(), ApiError> {
    match reader(api, headers)?.scope {
        Scope::Platform => Ok(()),
        Scope::Channel(c) => Err(err(
            StatusCode::FORBIDDEN,
            format!("{what} needs a platform key; this key reads channel {c} only"),
        )),
    }
}

/// Checks the operator token.
pub fn operator(api: &Api, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(want) = &api.operator_token else {
        return Err(err(
            StatusCode::FORBIDDEN,
            "operator endpoints are disabled: start the merger with --operator-token",
        ));
    };
    match bearer(headers) {
        Some(t) if tally_link::secret::same(t, want) => Ok(()),
        _ => Err(err(
            StatusCode::UNAUTHORIZED,
            "operator token required: Authorization: Bearer <token>",
        )),
    }
}
