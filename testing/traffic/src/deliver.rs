//! Delivering beacons to an edge over HTTP, as a CDN would pass them on.

use crate::{Beacon, Outcome};

/// A made-up but stable client address per session (what a CDN would forward in
/// `X-Forwarded-For`).
pub fn client_ip(session: &str) -> String {
    let h = session
        .bytes()
        .fold(2_166_136_261u32, |h, b| (h ^ b as u32).wrapping_mul(16_777_619));
    format!("10.{}.{}.{}", h >> 24, (h >> 16) & 255, (h >> 8) & 255)
}

/// POSTs a beacon to `url` (an edge's `/v1/events`) with the CDN's headers
/// (`cf-ipcountry`, `x-forwarded-for`) and says what became of it. Half the beacons go as
/// `text/plain` (what `navigator.sendBeacon` sends), half as `application/json`.
pub async fn deliver(http: &reqwest::Client, url: &str, b: &Beacon) -> Outcome {
    let ct = if b.body.len() % 2 == 0 {
        "text/plain;charset=UTF-8"
    } else {
        "application/json"
    };
    let r = http
        .post(url)
        .header("content-type", ct)
        .header("cf-ipcountry", b.country)
        .header("user-agent", b.user_agent)
        .header("x-forwarded-for", client_ip(&b.session))
        .body(b.body.clone())
        .send()
        .await;
    let Ok(r) = r else { return Outcome::Failed };
    match r.status().as_u16() {
        202 => {
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            let rejected = body["rejected"]
                .as_array()
                .map(|a| a.iter().filter_map(|r| r["index"].as_u64().map(|i| i as u32)).collect())
                .unwrap_or_default();
            Outcome::Accepted(rejected)
        }
        429 | 500..=599 => Outcome::Failed,
        _ => Outcome::Refused,
    }
}
