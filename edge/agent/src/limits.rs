//! Rate limits per session (events) and per client address (beacons), checked before
//! a beacon is ingested so that a refused beacon counts nothing.
//!
//! Every limiter is keyed by a 128-bit hash of the id (seeded randomly per process),
//! not by the id itself: a key costs the same 16 bytes whatever a client writes as its
//! session id or address, and a client cannot aim its ids at another's key.

use crate::config::AgentConfig;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};
use tally_collector::route::Sessions;

/// Which limit a request is over (answered `429` with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Limited {
    /// Beacons per second from one address.
    #[error("too many beacons from {addr}; slow down")]
    Address {
        /// The client address.
        addr: String,
    },
    /// Events per second of one session.
    #[error("too many events from session {session}; slow down")]
    Session {
        /// The session id.
        session: String,
    },
    /// Beacons without a readable session id from one address.
    #[error("too many beacons without a readable session_id from {addr}; slow down")]
    UnknownSession {
        /// The client address.
        addr: String,
    },
    /// New videos and streams followed by one address.
    #[error("{addr} asks for too many different videos and streams; slow down")]
    Interest {
        /// The client address.
        addr: String,
    },
}

/// Events a beacon whose session could not be found is charged as.
const UNKNOWN_SESSION_EVENTS: u32 = 10;

/// The agent's rate limiters.
pub struct Limits {
    sessions: DefaultKeyedRateLimiter<u128>,
    addrs: DefaultKeyedRateLimiter<u128>,
    interest: DefaultKeyedRateLimiter<u128>,
    /// Beacons per session per minute before the session counts as a bot.
    bursts: Option<DefaultKeyedRateLimiter<u128>>,
    /// Sessions seen bursting, until when.
    flagged: std::sync::Mutex<std::collections::HashMap<u128, Instant>>,
    /// The keys' hash seed.
    seed: u64,
}

/// An id as it is shown in a refusal: at most the longest id a beacon may carry.
fn shown(id: &[u8]) -> String {
    let s = String::from_utf8_lossy(id);
    match s.char_indices().nth(tally_collector::MAX_ID_LEN) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.into_owned(),
    }
}

/// How long a session that burst is treated as a bot.
const BURST_FLAG: Duration = Duration::from_secs(600);
/// Most sessions remembered as bursting; beyond it the oldest flags are forgotten.
const MAX_FLAGGED: usize = 100_000;

/// Videos or streams this edge does not follow yet that one address may ask for a
/// minute (each becomes interest sent to the mergers); bursts of twice that.
pub const NEW_INTEREST_PER_MIN: u32 = 60;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

impl Limits {
    /// Limits from the config: a session may send `session_events_per_s` events a second
    /// with bursts up to a full beacon; an address `addr_beacons_per_s` beacons a second
    /// with bursts of twice that.
    pub fn new(cfg: &AgentConfig) -> Limits {
        let per_session = Quota::per_second(nz(cfg.session_events_per_s))
            .allow_burst(nz(cfg.max_batch_events.max(cfg.session_events_per_s * 4)));
        let per_addr = Quota::per_second(nz(cfg.addr_beacons_per_s)).allow_burst(nz(cfg.addr_beacons_per_s * 2));
        let interest = Quota::per_minute(nz(NEW_INTEREST_PER_MIN)).allow_burst(nz(NEW_INTEREST_PER_MIN * 2));
        let n = cfg.bot_burst_beacons_per_min;
        Limits {
            sessions: RateLimiter::keyed(per_session),
            addrs: RateLimiter::keyed(per_addr),
            interest: RateLimiter::keyed(interest),
            bursts: (n > 0).then(|| RateLimiter::keyed(Quota::per_minute(nz(n)).allow_burst(nz(n)))),
            flagged: Default::default(),
            seed: {
                use std::hash::{BuildHasher, Hasher};
                std::collections::hash_map::RandomState::new().build_hasher().finish()
            },
        }
    }

    /// The limiter key of an id.
    fn key(&self, id: &[u8]) -> u128 {
        xxhash_rust::xxh3::xxh3_128_with_seed(id, self.seed)
    }

    /// Takes one beacon for the burst heuristic: whether one of its sessions sends
    /// beacons faster than a player does (or did so in the last ten minutes).
    pub fn bursting(&self, sessions: &Sessions<'_>) -> bool {
        let Some(bursts) = &self.bursts else {
            return false;
        };
        let ids: Vec<u128> = match sessions {
            Sessions::One { session, .. } => vec![self.key(session)],
            Sessions::Many(events) => {
                let mut ids: Vec<u128> = events.iter().map(|(s, _)| self.key(s)).collect();
                ids.sort_unstable();
                ids.dedup();
                ids
            }
            Sessions::Unknown => return false,
        };
        let now = Instant::now();
        let flagged = || self.flagged.lock().unwrap_or_else(|p| p.into_inner());
        let mut bot = false;
        for id in ids {
            // the shared map is locked only to look up and to flag, not around the
            // (lock-free) rate check every beacon of every worker makes
            if flagged().get(&id).is_some_and(|until| *until > now) {
                bot = true;
                continue;
            }
            if bursts.check_key(&id).is_err() {
                let mut flagged = flagged();
                if flagged.len() >= MAX_FLAGGED {
                    flagged.retain(|_, until| *until > now);
                    if flagged.len() >= MAX_FLAGGED {
                        flagged.clear();
                    }
                }
                flagged.insert(id, now + BURST_FLAG);
                bot = true;
            }
        }
        bot
    }

    /// Takes one new video or stream to follow for `addr`, or says it asks for too many.
    pub fn check_new_interest(&self, addr: &str) -> Result<(), Limited> {
        self.interest
            .check_key(&self.key(addr.as_bytes()))
            .map_err(|_| Limited::Interest { addr: shown(addr.as_bytes()) })
    }

    /// Takes one beacon from `addr` with the events of `sessions`, or says which limit
    /// it is over.
    pub fn check(&self, addr: &str, sessions: &Sessions<'_>) -> Result<(), Limited> {
        if self.addrs.check_key(&self.key(addr.as_bytes())).is_err() {
            return Err(Limited::Address {
                addr: shown(addr.as_bytes()),
            });
        }
        let over = |s: &[u8], n: u32| -> Result<(), Limited> {
            match self.sessions.check_key_n(&self.key(s), nz(n)) {
                Ok(Ok(())) => Ok(()),
                _ => Err(Limited::Session { session: shown(s) }),
            }
        };
        match sessions {
            Sessions::One { session, events } => over(session, *events),
            Sessions::Many(events) => {
                let mut per: std::collections::HashMap<&[u8], u32> = std::collections::HashMap::new();
                for (s, _) in events {
                    *per.entry(s.as_slice()).or_default() += 1;
                }
                per.into_iter().try_for_each(|(s, n)| over(s, n))
            }
            // No session found in the bytes (an escaped key, say): such beacons share
            // one allowance per address, each charged as ten events.
            Sessions::Unknown => {
                let key = self.key(&[b"?unknown-session@".as_slice(), addr.as_bytes()].concat());
                match self.sessions.check_key_n(&key, nz(UNKNOWN_SESSION_EVENTS)) {
                    Ok(Ok(())) => Ok(()),
                    _ => Err(Limited::UnknownSession {
                        addr: shown(addr.as_bytes()),
                    }),
                }
            }
        }
    }

    /// Forgets keys that are back to full capacity (call now and then).
    pub fn sweep(&self) {
        self.sessions.retain_recent();
        self.sessions.shrink_to_fit();
        self.addrs.retain_recent();
        self.addrs.shrink_to_fit();
        self.interest.retain_recent();
        self.interest.shrink_to_fit();
        if let Some(b) = &self.bursts {
            b.retain_recent();
            b.shrink_to_fit();
        }
        let now = Instant::now();
        self.flagged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_over_its_rate_is_refused_and_others_are_not() {
        let cfg = AgentConfig {
            session_events_per_s: 5,
            max_batch_events: 20,
            ..AgentConfig::default()
        };
        let l = Limits::new(&cfg);
        let s = Sessions::One {
            session: b"s1",
            events: 10,
        };
        assert!(l.check("1.2.3.4", &s).is_ok());
        assert!(l.check("1.2.3.4", &s).is_ok());
        let e = l.check("1.2.3.4", &s).unwrap_err();
        assert_eq!(e, Limited::Session { session: "s1".into() });
        assert!(e.to_string().contains("session s1"), "{e}");
        let other = Sessions::One {
            session: b"s2",
            events: 10,
        };
        assert!(l.check("1.2.3.4", &other).is_ok());
    }

    #[test]
    fn beacons_without_a_readable_session_are_limited_per_address() {
        let cfg = AgentConfig {
            session_events_per_s: 5,
            max_batch_events: 20,
            addr_beacons_per_s: 1_000,
            ..AgentConfig::default()
        };
        let l = Limits::new(&cfg);
        let ok = (0..10)
            .filter(|_| l.check("7.7.7.7", &Sessions::Unknown).is_ok())
            .count();
        assert_eq!(ok, 2, "a burst of 20 events, ten a beacon");
        let e = l.check("7.7.7.7", &Sessions::Unknown).unwrap_err();
        assert!(matches!(e, Limited::UnknownSession { .. }), "{e}");
        assert!(l.check("6.6.6.6", &Sessions::Unknown).is_ok(), "per address");
    }

    #[test]
    fn a_huge_session_id_costs_a_fixed_key_and_is_shown_cut() {
        let cfg = AgentConfig {
            session_events_per_s: 1,
            max_batch_events: 1,
            ..AgentConfig::default()
        };
        let l = Limits::new(&cfg);
        let huge = vec![b'x'; 60_000];
        let s = Sessions::One {
            session: &huge,
            events: 1,
        };
        // a burst of four events a second, then refused
        let ok = (0..4).filter(|_| l.check("1.2.3.4", &s).is_ok()).count();
        assert_eq!(ok, 4);
        let e = l.check("1.2.3.5", &s).unwrap_err();
        let Limited::Session { session } = &e else {
            panic!("{e}");
        };
        assert_eq!(session.len(), tally_collector::MAX_ID_LEN + 3, "cut to the longest id");
        // the same id spelled once more is the same key; another id is not limited
        let other = Sessions::One {
            session: b"s2",
            events: 1,
        };
        assert!(l.check("1.2.3.6", &other).is_ok());
    }

    #[test]
    fn an_address_over_its_rate_is_refused() {
        let cfg = AgentConfig {
            addr_beacons_per_s: 3,
            ..AgentConfig::default()
        };
        let l = Limits::new(&cfg);
        let ok = (0..20)
            .filter(|_| l.check("9.9.9.9", &Sessions::Unknown).is_ok())
            .count();
        assert_eq!(ok, 6, "burst of twice the rate");
        assert!(l.check("8.8.8.8", &Sessions::Unknown).is_ok());
    }
}
