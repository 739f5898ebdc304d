//! What the merger trusts an edge with: its secret, the POP it may speak for, and how far
//! its frames' times may lie from the merger's clock.

use std::collections::HashMap;
use tally_delta::DeltaFrame;

/// Why an edge was not let in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Unknown edge or wrong secret (one answer for both, so neither is revealed).
    #[error("unknown edge or wrong secret for edge {edge}")]
    Refused {
        /// The edge id it claimed.
        edge: String,
    },
    /// Too many failed attempts from this address in the window.
    #[error("too many failed attempts from this address; retry in {retry_in_s} s")]
    Throttled {
        /// Seconds until the window ends.
        retry_in_s: u64,
    },
}

/// Why a frame from an authenticated edge cannot be true.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameBoundsError {
    /// It names another POP than its edge may speak for.
    #[error("edge {edge} may not send frames for POP {pop}")]
    ForeignPop {
        /// The authenticated edge.
        edge: String,
        /// The POP the frame names.
        pop: String,
    },
    /// It ends after the merger's clock plus the allowed skew.
    #[error("frame ends at {end_ms} ms, more than {skew_ms} ms after the merger's clock ({now_ms} ms)")]
    FromTheFuture {
        /// The frame's interval end.
        end_ms: u64,
        /// The allowed skew.
        skew_ms: u64,
        /// The merger's clock.
        now_ms: u64,
    },
    /// A row's minute lies outside what its edge could have accepted.
    #[error("a row's minute {minute} is outside what the edge could accept ({lo}..={hi}) for a frame ending at {end_ms} ms")]
    MinuteOutOfBounds {
        /// The row's minute.
        minute: u32,
        /// The first minute allowed.
        lo: u64,
        /// The last minute allowed.
        hi: u64,
        /// The frame's interval end.
        end_ms: u64,
    },
}

/// The edges a merger knows and the bounds their frames must keep.
#[derive(Debug, Clone, Default)]
pub struct EdgePolicy {
    /// Edge id -> shared secret.
    pub secrets: HashMap<String, String>,
    /// Edge id -> the POP its frames must name; an edge without an entry may name the
    /// POP that is its id, or its id's part before the last `-` (`fra-1` -> `fra`).
    pub pops: HashMap<String, String>,
    /// Edges refuse events older than this (their lateness bound, ms).
    pub lateness_ms: u64,
    /// Clock skew allowed between an edge and the merger, and inside a frame (ms).
    pub skew_ms: u64,
}

impl EdgePolicy {
    /// Checks an edge's secret.
    ///
    /// The secret is compared in constant time (digests of both, folded byte by byte),
    /// and an unknown edge and a wrong secret get the same answer, so neither timing nor
    /// wording tells an attacker which edge ids exist; the log says which it was.
    pub fn authenticate(&self, edge_id: &str, secret: &str) -> Result<(), AuthError> {
        let (known, want) = match self.secrets.get(edge_id) {
            Some(s) => (true, s.as_str()),
            // compare against something all the same, so both cases take as long
            None => (false, "no such edge"),
        };
        if tally_link::secret::same(secret, want) && known {
            return Ok(());
        }
        tracing::warn!(
            edge = edge_id,
            reason = if known { "wrong secret" } else { "unknown edge" },
            "edge refused"
        );
        Err(AuthError::Refused {
            edge: edge_id.to_owned(),
        })
    }

    /// Whether `edge` may send frames for `pop`.
    pub fn may_speak_for(&self, edge: &str, pop: &str) -> bool {
        match self.pops.get(edge) {
            Some(p) => p == pop,
            None => edge == pop || edge.rsplit_once('-').is_some_and(|(head, _)| head == pop),
        }
    }

    /// Why a frame from authenticated `edge` cannot be true, if it cannot: it speaks for
    /// another POP, it ends after the merger's `now_ms` (plus skew), or a row's minute
    /// lies outside what its edge could have accepted (its interval end minus the
    /// lateness bound, to the end plus skew). A frame may arrive any time after it was
    /// made (edges spool through outages); only its contents are bounded.
    pub fn check_frame(&self, edge: &str, frame: &DeltaFrame, now_ms: u64) -> Result<(), FrameBoundsError> {
        let h = &frame.header;
        if !self.may_speak_for(edge, &h.pop_id) {
            return Err(FrameBoundsError::ForeignPop {
                edge: edge.to_owned(),
                pop: h.pop_id.clone(),
            });
        }
        if h.interval_end_ms > now_ms.saturating_add(self.skew_ms) {
            return Err(FrameBoundsError::FromTheFuture {
                end_ms: h.interval_end_ms,
                skew_ms: self.skew_ms,
                now_ms,
            });
        }
        let lo = h.interval_end_ms.saturating_sub(self.lateness_ms + self.skew_ms) / 60_000;
        let hi = h.interval_end_ms.saturating_add(self.skew_ms) / 60_000;
        let minutes = frame
            .counters
            .iter()
            .map(|r| r.minute)
            .chain(frame.uniques.iter().map(|u| u.minute));
        for m in minutes {
            if u64::from(m) < lo || u64::from(m) > hi {
                return Err(FrameBoundsError::MinuteOutOfBounds {
                    minute: m,
                    lo,
                    hi,
                    end_ms: h.interval_end_ms,
                });
            }
        }
        Ok(())
    }
}

/// Failed authentications one address may make per window before its further failures
/// are answered slowly.
pub const MAX_FAILURES: u32 = 10;
/// The window (ms).
pub const FAILURE_WINDOW_MS: u64 = 60_000;
/// How long a throttled failure is held before its answer: with the per-address
/// connection caps this bounds the guesses an address can make per second.
pub const THROTTLED_DELAY: std::time::Duration = std::time::Duration::from_secs(1);
/// Addresses remembered at most (the oldest windows go first).
const MAX_ADDRESSES: usize = 100_000;

/// Failed edge authentications per client address. The right secret is always
/// accepted, whatever the address did before; past [`MAX_FAILURES`] failures in a
/// window, an address's further failures are answered `Throttled` after
/// [`THROTTLED_DELAY`], so secrets cannot be guessed at speed. A success does not clear
/// the count: an attacker behind the same address as a real edge gains nothing from it.
#[derive(Default)]
pub struct AuthThrottle {
    failures: std::sync::Mutex<HashMap<std::net::IpAddr, (u32, u64)>>,
}

impl AuthThrottle {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<std::net::IpAddr, (u32, u64)>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(Throttled)` when `ip` is past its failures for the window.
    pub fn check(&self, ip: std::net::IpAddr, now_ms: u64) -> Result<(), AuthError> {
        match self.lock().get(&ip) {
            Some(&(n, since)) if n > MAX_FAILURES && now_ms < since + FAILURE_WINDOW_MS => Err(AuthError::Throttled {
                retry_in_s: (since + FAILURE_WINDOW_MS - now_ms).div_ceil(1000),
            }),
            _ => Ok(()),
        }
    }

    /// Records a failed attempt from `ip`.
    pub fn record_failure(&self, ip: std::net::IpAddr, now_ms: u64) {
        let mut m = self.lock();
        if m.len() >= MAX_ADDRESSES && !m.contains_key(&ip) {
            m.retain(|_, (_, since)| now_ms < *since + FAILURE_WINDOW_MS);
            if m.len() >= MAX_ADDRESSES {
                return;
            }
        }
        let e = m.entry(ip).or_insert((0, now_ms));
        if now_ms >= e.1 + FAILURE_WINDOW_MS {
            *e = (0, now_ms);
        }
        e.0 = e.0.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_delta::{CounterRow, Country, Counts, Device, FrameHeader, FrameId, Source};

    const MIN: u64 = 60_000;

    fn policy() -> EdgePolicy {
        EdgePolicy {
            secrets: [("fra-1".to_string(), "s3cret-123".to_string())].into(),
            pops: [("odd".to_string(), "ams".to_string())].into(),
            lateness_ms: 24 * 60 * MIN,
            skew_ms: 10 * MIN,
        }
    }

    fn frame(pop: &str, end_ms: u64, minute: u64) -> DeltaFrame {
        DeltaFrame {
            header: FrameHeader {
                id: FrameId {
                    edge_id: "fra-1/0".into(),
                    epoch: 1,
                    seq: 1,
                },
                pop_id: pop.into(),
                interval_start_ms: end_ms - 1_000,
                interval_end_ms: end_ms,
            },
            strings: vec!["v".into()],
            counters: vec![CounterRow {
                minute: minute as u32,
                video: 0,
                channel: 0,
                category: 0,
                country: Country(*b"DE"),
                device: Device::Tv,
                source: Source::Direct,
                live: false,
                counts: Counts {
                    views: 1,
                    ..Counts::default()
                },
                facts: None,
            }],
            uniques: vec![],
            live: vec![],
            live_beats: vec![],
            intake: Default::default(),
        }
    }

    #[test]
    fn frames_keep_to_their_pop_and_to_times_the_edge_could_accept() {
        let p = policy();
        let now = 30_000_000 * MIN;
        assert!(p.check_frame("fra-1", &frame("fra", now, now / MIN), now).is_ok());
        // spooled for a week: still fine, its rows are within a day of its end
        let old = now - 7 * 24 * 60 * MIN;
        assert!(p.check_frame("fra-1", &frame("fra", old, old / MIN - 600), now).is_ok());
        // another POP's name
        let e = p.check_frame("fra-1", &frame("ams", now, now / MIN), now).unwrap_err();
        assert!(matches!(&e, FrameBoundsError::ForeignPop { pop, .. } if pop == "ams"), "{e}");
        assert!(e.to_string().contains("POP ams"), "{e}");
        assert!(p.check_frame("odd", &frame("ams", now, now / MIN), now).is_ok());
        // from the future
        let e = p
            .check_frame("fra-1", &frame("fra", now + 60 * MIN, now / MIN), now)
            .unwrap_err();
        assert!(matches!(e, FrameBoundsError::FromTheFuture { .. }), "{e}");
        assert!(e.to_string().contains("after the merger's clock"), "{e}");
        // a row far from its frame's time (a day of watch time aimed at one old minute)
        let e = p
            .check_frame("fra-1", &frame("fra", now, now / MIN - 3 * 24 * 60), now)
            .unwrap_err();
        assert!(matches!(e, FrameBoundsError::MinuteOutOfBounds { .. }), "{e}");
        let e = p
            .check_frame("fra-1", &frame("fra", now, now / MIN + 60), now)
            .unwrap_err();
        assert!(matches!(e, FrameBoundsError::MinuteOutOfBounds { .. }), "{e}");
    }

    #[test]
    fn an_address_that_keeps_failing_has_its_failures_throttled_for_the_rest_of_its_window() {
        let t = AuthThrottle::default();
        let (a, b): (std::net::IpAddr, std::net::IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for _ in 0..MAX_FAILURES {
            t.record_failure(a, 1_000);
            assert!(t.check(a, 1_000).is_ok());
        }
        t.record_failure(a, 1_000);
        assert_eq!(t.check(a, 2_000), Err(AuthError::Throttled { retry_in_s: 59 }));
        assert!(t.check(b, 2_000).is_ok(), "other addresses are not affected");
        assert!(t.check(a, 1_000 + FAILURE_WINDOW_MS).is_ok(), "the window ends");
    }

    #[test]
    fn unknown_edge_and_wrong_secret_are_refused_alike() {
        let p = policy();
        assert!(p.authenticate("fra-1", "s3cret-123").is_ok());
        let a = p.authenticate("fra-1", "wrong").unwrap_err();
        let b = p.authenticate("nope", "s3cret-123").unwrap_err();
        assert!(matches!(a, AuthError::Refused { .. }) && matches!(b, AuthError::Refused { .. }));
        assert_eq!(a.to_string().replace("fra-1", "X"), b.to_string().replace("nope", "X"));
    }
}
