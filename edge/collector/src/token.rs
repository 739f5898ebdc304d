//! Signed playback tokens: the platform's HMAC-SHA256 over a video's claims.
//!
//! A token is `base64url(claims JSON) "." base64url(HMAC-SHA256(key, first part))`.
//! Channel, category and the live flag come only from here, so a client cannot forge them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What a playback token asserts about a video.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Video id.
    #[serde(rename = "v")]
    pub video: String,
    /// Channel id.
    #[serde(rename = "c")]
    pub channel: String,
    /// Category.
    #[serde(rename = "k")]
    pub category: String,
    /// Expiry, seconds since the Unix epoch.
    #[serde(rename = "e")]
    pub expires_s: u64,
    /// Whether the video is a live stream.
    #[serde(rename = "l", default)]
    pub live: bool,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `payload.signature`, or not base64url, or the claims are not JSON.
    #[error("token is malformed")]
    Malformed,
    /// The signature does not match the key.
    #[error("token signature is invalid")]
    BadSignature,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
}

/// Signs `claims` with `key`.
pub fn mint(key: &[u8], claims: &Claims) -> String {
    // Claims are plain strings and numbers: serialising cannot fail.
    let json = serde_json::to_vec(claims).unwrap_or_default();
    let payload = B64.encode(json);
    let sig = B64.encode(mac(key, payload.as_bytes()));
    format!("{payload}.{sig}")
}

/// Checks the signature and returns the claims. Expiry is checked by the caller against
/// the event's time ([`Claims::check_expiry`]) so that cached claims can be reused.
pub fn verify(key: &[u8], token: &str) -> Result<Claims, TokenError> {
    let (payload, sig) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
    let mut m = HmacSha256::new_from_slice(key).map_err(|_| TokenError::Malformed)?;
    m.update(payload.as_bytes());
    m.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
    let json = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)
}

impl Claims {
    /// Fails when the token had expired at `at_ms`.
    pub fn check_expiry(&self, at_ms: u64) -> Result<(), TokenError> {
        if at_ms / 1000 >= self.expires_s {
            Err(TokenError::Expired)
        } else {
            Ok(())
        }
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
            expires_s: 2_000,
            live: true,
        }
    }

    #[test]
    fn minted_tokens_verify() {
        let t = mint(b"k", &claims());
        assert_eq!(verify(b"k", &t).unwrap(), claims());
    }

    #[test]
    fn wrong_key_tampering_and_garbage_fail() {
        let t = mint(b"k", &claims());
        assert_eq!(verify(b"other", &t), Err(TokenError::BadSignature));
        let forged = mint(
            b"k",
            &Claims {
                channel: "evil".into(),
                ..claims()
            },
        );
        let spliced = format!("{}.{}", forged.split('.').next().unwrap(), t.split('.').nth(1).unwrap());
        assert_eq!(verify(b"k", &spliced), Err(TokenError::BadSignature));
        assert_eq!(verify(b"k", "nodot"), Err(TokenError::Malformed));
        assert_eq!(verify(b"k", "a.!!!"), Err(TokenError::Malformed));
    }

    #[test]
    fn expiry_is_checked_against_the_given_time() {
        let c = claims();
        assert!(c.check_expiry(1_999_999).is_ok());
        assert_eq!(c.check_expiry(2_000_000), Err(TokenError::Expired));
    }
}
