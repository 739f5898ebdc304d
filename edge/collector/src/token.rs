//! Playback tokens: JSON Web Tokens signed with HS256 by the platform.
//!
//! A token is a compact JWT (`header.claims.signature`, base64url without padding), so a
//! platform mints it with any stock JWT library. The header must say `"alg":"HS256"`;
//! any other algorithm (`none` included) is refused. The claims:
//!
//! | claim | meaning |
//! | --- | --- |
//! | `vid` | video id |
//! | `ch`  | channel id |
//! | `cat` | category (optional) |
//! | `live` | the video is a live stream (optional, default false) |
//! | `sid` | the viewer session the token is for: beacons must carry it as `session_id` |
//! | `uid` | the signed-in user (optional): likes, shares and comments are this user's |
//! | `iat` | issued at, seconds since the Unix epoch |
//! | `exp` | expiry, seconds since the Unix epoch |
//!
//! Channel, category and the live flag come only from here, so a client cannot forge
//! them; `sid` binds the token to one session, so a harvested token yields one view per
//! video, and `iat` bounds the watch time a session can claim (see the collector). The
//! viewer a like, share or comment belongs to is `uid` when present, else `sid`: a
//! beacon's own `user_id` field decides nothing.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The only header this crate writes; verification accepts any header whose `alg` is HS256.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// What a playback token asserts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Video id.
    #[serde(rename = "vid")]
    pub video: String,
    /// Channel id.
    #[serde(rename = "ch")]
    pub channel: String,
    /// Category.
    #[serde(rename = "cat", default)]
    pub category: String,
    /// Whether the video is a live stream.
    #[serde(default)]
    pub live: bool,
    /// The viewer session (a nonce the platform chose) whose beacons may use the token.
    #[serde(rename = "sid")]
    pub session: String,
    /// The signed-in user, if any: engagement counts once per (user, video) across the
    /// user's sessions and devices.
    #[serde(rename = "uid", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Issued at, seconds since the Unix epoch.
    #[serde(rename = "iat")]
    pub issued_s: u64,
    /// Expiry, seconds since the Unix epoch.
    #[serde(rename = "exp")]
    pub expires_s: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a compact JWT, not base64url, or the header or claims are not JSON.
    #[error("token is malformed")]
    Malformed,
    /// The header names an algorithm other than HS256.
    #[error("token algorithm is not HS256")]
    Algorithm,
    /// A required claim (`vid`, `ch`, `sid`, `iat`, `exp`) is missing or has the wrong type.
    #[error("token lacks a required claim (vid, ch, sid, iat, exp)")]
    MissingClaim,
    /// The signature does not match the key.
    #[error("token signature is invalid")]
    BadSignature,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
    /// The event is dated before the token was issued.
    #[error("event is older than its token")]
    NotYetValid,
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: std::borrow::Cow<'a, str>,
}

/// Signs `claims` with `key` as an HS256 JWT.
pub fn mint(key: &[u8], claims: &Claims) -> String {
    // Claims are plain strings and numbers: serialising cannot fail.
    let json = serde_json::to_vec(claims).unwrap_or_default();
    let signed = format!("{}.{}", B64.encode(HEADER), B64.encode(json));
    let sig = B64.encode(mac(key, signed.as_bytes()));
    format!("{signed}.{sig}")
}

/// Checks the header and signature and returns the claims. Times are checked by the
/// caller ([`Claims::check_times`]) so that verified claims can be cached.
pub fn verify(key: &[u8], token: &str) -> Result<Claims, TokenError> {
    let (signed, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (header, payload) = signed.split_once('.').ok_or(TokenError::Malformed)?;
    let header = B64.decode(header).map_err(|_| TokenError::Malformed)?;
    let header: Header<'_> = serde_json::from_slice(&header).map_err(|_| TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::Algorithm);
    }
    let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
    let mut m = HmacSha256::new_from_slice(key).map_err(|_| TokenError::Malformed)?;
    m.update(signed.as_bytes());
    // `verify_slice` compares in constant time.
    m.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
    let json = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
    let value: serde_json::Value = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    if !value.is_object() {
        return Err(TokenError::Malformed);
    }
    serde_json::from_value(value).map_err(|_| TokenError::MissingClaim)
}

/// When a token may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Issued at, seconds since the Unix epoch.
    pub issued_s: u64,
    /// Expiry, seconds since the Unix epoch.
    pub expires_s: u64,
}

impl Claims {
    /// The token's validity window.
    pub fn validity(&self) -> Validity {
        Validity {
            issued_s: self.issued_s,
            expires_s: self.expires_s,
        }
    }
}

impl Validity {
    /// Checks the token's validity window for an event dated `event_ms` that arrived at
    /// `arrival_ms` (both ms).
    ///
    /// The event must lie between issue (less `skew_ms` for the client's clock) and
    /// expiry, and the token must not have expired more than `lateness_ms` before the
    /// event arrived: a phone that was offline may send what it saw while the token was
    /// valid, up to the lateness bound, but a token harvested from a page stops working
    /// a fixed time after its expiry whatever time the client writes into its events.
    pub fn check_times(&self, event_ms: u64, arrival_ms: u64, skew_ms: u64, lateness_ms: u64) -> Result<(), TokenError> {
        let expires_ms = self.expires_s.saturating_mul(1000);
        if event_ms >= expires_ms || arrival_ms >= expires_ms.saturating_add(lateness_ms) {
            return Err(TokenError::Expired);
        }
        if event_ms.saturating_add(skew_ms) < self.issued_s.saturating_mul(1000) {
            return Err(TokenError::NotYetValid);
        }
        Ok(())
    }
}

fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut m = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            video: "v1".into(),
            channel: "c1".into(),
            category: "music".into(),
            live: true,
            session: "s1".into(),
            user: None,
            issued_s: 1_000,
            expires_s: 2_000,
        }
    }

    fn sign_raw(key: &[u8], header: &str, claims: &str) -> String {
        let signed = format!("{}.{}", B64.encode(header), B64.encode(claims));
        format!("{signed}.{}", B64.encode(mac(key, signed.as_bytes())))
    }

    #[test]
    fn minted_tokens_verify() {
        let t = mint(b"k", &claims());
        assert_eq!(t.matches('.').count(), 2, "compact JWT: {t}");
        assert_eq!(verify(b"k", &t).unwrap(), claims());
    }

    /// A token as a stock library writes it: other header fields, extra claims, other
    /// claim order.
    #[test]
    fn tokens_from_other_libraries_verify() {
        let t = sign_raw(
            b"k",
            r#"{"typ":"JWT","alg":"HS256","kid":"k1"}"#,
            r#"{"iat":1000,"exp":2000,"sid":"s1","vid":"v1","ch":"c1","cat":"music","live":true,"iss":"platform"}"#,
        );
        assert_eq!(verify(b"k", &t).unwrap(), claims());
    }

    #[test]
    fn wrong_key_tampering_algorithms_and_garbage_fail() {
        let t = mint(b"k", &claims());
        assert_eq!(verify(b"other", &t), Err(TokenError::BadSignature));
        let forged = mint(
            b"k",
            &Claims {
                channel: "evil".into(),
                ..claims()
            },
        );
        let mut parts: Vec<&str> = forged.split('.').collect();
        parts[2] = t.split('.').nth(2).unwrap();
        assert_eq!(verify(b"k", &parts.join(".")), Err(TokenError::BadSignature));
        let body = serde_json::to_string(&claims()).unwrap();
        let none = format!("{}.{}.", B64.encode(r#"{"alg":"none"}"#), B64.encode(&body));
        assert_eq!(verify(b"k", &none), Err(TokenError::Algorithm));
        assert_eq!(verify(b"k", &sign_raw(b"k", r#"{"alg":"HS512"}"#, &body)), Err(TokenError::Algorithm));
        let unbound = sign_raw(b"k", HEADER, r#"{"vid":"v1","ch":"c1","iat":1000,"exp":2000}"#);
        assert_eq!(verify(b"k", &unbound), Err(TokenError::MissingClaim));
        assert_eq!(verify(b"k", "nodot"), Err(TokenError::Malformed));
        assert_eq!(verify(b"k", "a.b.!!!"), Err(TokenError::Malformed));
        assert_eq!(verify(b"k", &sign_raw(b"k", HEADER, "[1]")), Err(TokenError::Malformed));
    }

    #[test]
    fn times_are_checked_against_event_and_arrival() {
        let c = claims().validity();
        let (skew, late) = (100, 10_000);
        assert!(c.check_times(1_999_999, 1_999_999, skew, late).is_ok());
        assert_eq!(c.check_times(2_000_000, 2_000_000, skew, late), Err(TokenError::Expired));
        // a late offline event dated inside the token's life is accepted within the lateness bound
        assert!(c.check_times(1_500_000, 2_009_999, skew, late).is_ok());
        // a harvested token stops working after expiry + lateness, whatever the event says
        assert_eq!(c.check_times(1_500_000, 2_010_000, skew, late), Err(TokenError::Expired));
        assert!(c.check_times(999_900, 999_900, skew, late).is_ok());
        assert_eq!(c.check_times(999_899, 1_000_000, skew, late), Err(TokenError::NotYetValid));
    }
}
