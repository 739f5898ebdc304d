//! The beacon endpoint's answers, shared by every host (the edge agent, the Spin
//! component) so that they answer the same beacon the same way.

use crate::{BatchError, IngestOutcome};
use serde_json::{Value, json};

/// Why a beacon with this `Content-Type` is refused (hosts answer 415), if it is: only
/// `application/json` and `text/plain` (what `navigator.sendBeacon` sends) are taken.
pub fn refused_media_type(content_type: &str) -> Option<String> {
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if content_type.is_empty() || media == "application/json" || media == "text/plain" {
        return None;
    }
    Some(format!(
        "content type {media:?} is not accepted: send application/json or text/plain"
    ))
}

/// The message of a 413 for a body over `limit` bytes.
pub fn body_too_large(limit: usize) -> String {
    format!("beacon body exceeds {limit} bytes")
}

impl BatchError {
    /// The HTTP status a refused batch is answered with.
    pub fn status(&self) -> u16 {
        match self {
            BatchError::TooLarge { .. } | BatchError::TooManyEvents { .. } => 413,
            BatchError::Malformed(_) => 400,
        }
    }
}

impl IngestOutcome {
    /// The answer to a beacon that parsed: `202` with the counts and per-event
    /// rejections, or `400` (with an `error`) when events were refused and none taken.
    pub fn answer(&self) -> (u16, Value) {
        let rejected: Vec<Value> = self
            .rejected
            .iter()
            .map(|r| json!({ "index": r.index, "reason": r.reason.to_string() }))
            .collect();
        let mut body = json!({
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": rejected,
        });
        if self.accepted == 0 && !self.rejected.is_empty() && self.rejected.iter().all(|r| r.reason == crate::RejectReason::Bot) {
            body["error"] = json!("bot: the request was classified as a bot, and its events are not counted");
            return (403, body);
        }
        if self.accepted == 0 && !self.rejected.is_empty() {
            body["error"] = json!("no event of the beacon was accepted; see `rejected`");
            return (400, body);
        }
        (202, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RejectReason, Rejection};

    #[test]
    fn media_types() {
        assert_eq!(refused_media_type(""), None);
        assert_eq!(refused_media_type("text/plain;charset=UTF-8"), None);
        assert_eq!(refused_media_type("Application/JSON"), None);
        assert!(refused_media_type("image/png").unwrap().contains("\"image/png\""));
    }

    #[test]
    fn answers() {
        let bad = Rejection {
            index: 1,
            reason: RejectReason::TokenForOtherVideo,
        };
        let some = IngestOutcome {
            accepted: 1,
            duplicates: 0,
            rejected: vec![bad.clone()],
        };
        let (code, body) = some.answer();
        assert_eq!((code, body["rejected"][0]["index"].as_u64()), (202, Some(1)));
        assert!(body.get("error").is_none());
        let none = IngestOutcome {
            accepted: 0,
            duplicates: 0,
            rejected: vec![bad],
        };
        let (code, body) = none.answer();
        assert_eq!(code, 400);
        assert!(body["error"].is_string());
        assert_eq!(IngestOutcome::default().answer().0, 202);
        let bot = IngestOutcome {
            accepted: 0,
            duplicates: 0,
            rejected: vec![Rejection {
                index: 0,
                reason: RejectReason::Bot,
            }],
        };
        let (code, body) = bot.answer();
        assert_eq!((code, body["rejected"][0]["reason"].as_str()), (403, Some("bot")));
        assert_eq!(BatchError::Malformed("x".into()).status(), 400);
        assert_eq!(BatchError::TooManyEvents { count: 9, limit: 1 }.status(), 413);
    }
}
