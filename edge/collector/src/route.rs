//! Which session a beacon's events belong to, so that a host can give every event of a
//! session to the same collector state (dedup is exact per state) and apply rate limits
//! per session.
//!
//! Nearly every beacon carries one session: a byte scan for the `"session_id"` key finds
//! it without parsing. Only a beacon with several sessions is parsed and split.

use crate::{IngestOutcome, Rejection};
use memchr::memmem;
use serde::Deserialize;
use serde_json::value::RawValue;

/// The sessions of a beacon.
#[derive(Debug)]
pub enum Sessions<'a> {
    /// One session id (raw JSON string contents) on `events` events.
    One {
        /// The session id as written in the body.
        session: &'a [u8],
        /// Events (occurrences of the key).
        events: u32,
    },
    /// Several sessions: each event's raw JSON and its session id.
    Many(Vec<(Vec<u8>, &'a RawValue)>),
    /// No session id found, or the body does not parse: the collector will say why.
    Unknown,
}

impl PartialEq for Sessions<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Sessions::One { session: a, events: n }, Sessions::One { session: b, events: m }) => a == b && n == m,
            (Sessions::Many(a), Sessions::Many(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0 && x.1.get() == y.1.get())
            }
            (Sessions::Unknown, Sessions::Unknown) => true,
            _ => false,
        }
    }
}

const KEY: &[u8] = b"\"session_id\"";

/// Finds the sessions of a beacon body, as canonical (unescaped, then minimally
/// re-escaped) session ids: one session spelled two ways routes and is limited as one.
pub fn sessions(body: &[u8]) -> Sessions<'_> {
    // The byte scan is exact only without escapes: a key or session id spelled with a
    // `\` escape (`"session\u005fid"`) would escape it or differ from its plain
    // spelling. Such bodies are parsed.
    if memchr::memchr(b'\\', body).is_some() {
        return split(body);
    }
    let finder = memmem::Finder::new(KEY);
    let mut first: Option<&[u8]> = None;
    let mut events = 0u32;
    for at in finder.find_iter(body) {
        let Some(value) = string_after_key(&body[at + KEY.len()..]) else {
            continue;
        };
        events += 1;
        match first {
            None => first = Some(value),
            Some(f) if f == value => {}
            Some(_) => return split(body),
        }
    }
    match first {
        Some(session) => Sessions::One { session, events },
        None => Sessions::Unknown,
    }
}

/// The raw contents of the JSON string after `: ` following a key, if it is one.
fn string_after_key(rest: &[u8]) -> Option<&[u8]> {
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < rest.len() && rest[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    if rest.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    skip_ws(&mut i);
    if rest.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let mut j = start;
    while j < rest.len() {
        match rest[j] {
            b'\\' => j += 2,
            b'"' => return Some(&rest[start..j]),
            _ => j += 1,
        }
    }
    None
}

#[derive(Deserialize)]
struct Wrapped<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct SessionOnly {
    session_id: Option<serde_json::Value>,
}

fn split(body: &[u8]) -> Sessions<'_> {
    let Ok(text) = std::str::from_utf8(body) else {
        return Sessions::Unknown;
    };
    let events: Vec<&RawValue> = match text.trim_start().as_bytes().first() {
        Some(b'[') => match serde_json::from_str(text) {
            Ok(e) => e,
            Err(_) => return Sessions::Unknown,
        },
        Some(b'{') => match serde_json::from_str::<Wrapped>(text) {
            Ok(w) => w.events,
            Err(_) => return Sessions::Unknown,
        },
        _ => return Sessions::Unknown,
    };
    let out = events
        .into_iter()
        .map(|raw| {
            let session = match serde_json::from_str::<SessionOnly>(raw.get()) {
                Ok(SessionOnly {
                    session_id: Some(serde_json::Value::String(s)),
                }) => serde_json::to_string(&s)
                    .map(|q| q.as_bytes()[1..q.len() - 1].to_vec())
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            (session, raw)
        })
        .collect();
    Sessions::Many(out)
}

/// The collector instance a session goes to.
pub fn worker_of(session: &[u8], workers: usize) -> usize {
    (xxhash_rust::xxh3::xxh3_64(session) % workers.max(1) as u64) as usize
}

/// Part of a split beacon: the events that go to one place, as a JSON array body, and
/// their indexes in the original beacon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<K> {
    /// Where the part goes (a worker, a session).
    pub key: K,
    /// The part's events as a beacon body (a JSON array).
    pub body: Vec<u8>,
    /// Index in the original beacon of each event of the part.
    pub indexes: Vec<u32>,
}

impl<K> Part<K> {
    /// Adds the outcome of ingesting this part to the beacon's `total`, mapping the part's
    /// rejection indexes back to the original beacon's.
    pub fn absorb(&self, total: &mut IngestOutcome, part: IngestOutcome) {
        total.accepted += part.accepted;
        total.duplicates += part.duplicates;
        total.rejected.extend(part.rejected.into_iter().map(|r| Rejection {
            index: self.indexes.get(r.index as usize).copied().unwrap_or(r.index),
            reason: r.reason,
        }));
        total.rejected.sort_by_key(|r| r.index);
    }
}

/// Groups the events of a split beacon by `key_of(session)`, keeping their order; parts
/// come in the order their first event appears.
pub fn group<K: PartialEq>(events: &[(Vec<u8>, &RawValue)], key_of: impl Fn(&[u8]) -> K) -> Vec<Part<K>> {
    let mut parts: Vec<Part<K>> = Vec::new();
    for (i, (session, raw)) in events.iter().enumerate() {
        let key = key_of(session);
        let at = match parts.iter().position(|p| p.key == key) {
            Some(at) => at,
            None => {
                parts.push(Part {
                    key,
                    body: b"[".to_vec(),
                    indexes: Vec::new(),
                });
                parts.len() - 1
            }
        };
        let part = &mut parts[at];
        if !part.indexes.is_empty() {
            part.body.push(b',');
        }
        part.body.extend_from_slice(raw.get().as_bytes());
        part.indexes.push(i as u32);
    }
    for p in &mut parts {
        p.body.push(b']');
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_session_is_found_without_parsing() {
        let b = br#"{"events":[{"session_id":"s1","video_id":"v"},{"session_id" : "s1"}]}"#;
        assert_eq!(
            sessions(b),
            Sessions::One {
                session: b"s1",
                events: 2
            }
        );
    }

    fn keys(s: Sessions<'_>) -> Vec<Vec<u8>> {
        match s {
            Sessions::Many(v) => v.into_iter().map(|(k, _)| k).collect(),
            Sessions::One { session, events } => vec![session.to_vec(); events as usize],
            Sessions::Unknown => vec![],
        }
    }

    #[test]
    fn escaped_text_is_not_a_key() {
        let b = br#"[{"session_id":"s1","note":"\"session_id\":\"s2\""}]"#;
        assert_eq!(keys(sessions(b)), vec![b"s1".to_vec()]);
    }

    #[test]
    fn one_session_spelled_two_ways_routes_and_limits_as_one() {
        let plain = br#"[{"session_id":"s_1"}]"#;
        let escaped_key = br#"[{"session\u005fid":"s_1"}]"#;
        let escaped_value = br#"[{"session_id":"s\u005f1"}]"#;
        let mixed = br#"[{"session_id":"s_1"},{"session_id":"s\u005f1"}]"#;
        let want = vec![b"s_1".to_vec()];
        assert_eq!(keys(sessions(plain)), want);
        assert_eq!(keys(sessions(escaped_key)), want, "an escaped key is still the key");
        assert_eq!(keys(sessions(escaped_value)), want);
        assert_eq!(keys(sessions(mixed)), vec![b"s_1".to_vec(); 2]);
        let w = |k: &[u8]| worker_of(k, 8);
        assert_eq!(w(&keys(sessions(escaped_value))[0]), w(b"s_1"));
    }

    #[test]
    fn several_sessions_are_split_per_event() {
        let b = br#"[{"session_id":"a","n":1},{"session_id":"b"},{"session_id":"a"},{"x":1}]"#;
        let Sessions::Many(parts) = sessions(b) else {
            panic!("expected a split")
        };
        let ids: Vec<&[u8]> = parts.iter().map(|(s, _)| s.as_slice()).collect();
        assert_eq!(ids, vec![&b"a"[..], b"b", b"a", b""]);
        assert_eq!(parts[0].1.get(), r#"{"session_id":"a","n":1}"#);
    }

    #[test]
    fn garbage_is_unknown() {
        assert_eq!(sessions(b"not json"), Sessions::Unknown);
        assert_eq!(sessions(br#"[{"session_id":"a"},{"session_id":"b""#), Sessions::Unknown);
    }

    #[test]
    fn groups_keep_order_and_map_rejections_back() {
        let b = br#"[{"session_id":"a","n":1},{"session_id":"b"},{"session_id":"a","n":2}]"#;
        let Sessions::Many(events) = sessions(b) else {
            panic!("expected a split")
        };
        let parts = group(&events, |s| s.to_vec());
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].key, b"a");
        assert_eq!(parts[0].body, br#"[{"session_id":"a","n":1},{"session_id":"a","n":2}]"#);
        assert_eq!(parts[0].indexes, vec![0, 2]);
        assert_eq!(parts[1].body, br#"[{"session_id":"b"}]"#);
        let mut total = IngestOutcome::default();
        let one = |index| Rejection {
            index,
            reason: crate::RejectReason::TokenForOtherVideo,
        };
        parts[1].absorb(
            &mut total,
            IngestOutcome {
                accepted: 1,
                duplicates: 0,
                rejected: vec![],
            },
        );
        parts[0].absorb(
            &mut total,
            IngestOutcome {
                accepted: 1,
                duplicates: 1,
                rejected: vec![one(1)],
            },
        );
        assert_eq!((total.accepted, total.duplicates), (2, 1));
        assert_eq!(total.rejected, vec![one(2)]);
    }

    #[test]
    fn sessions_spread_over_workers() {
        let mut seen = [0u32; 4];
        for i in 0..1000 {
            seen[worker_of(format!("s{i}").as_bytes(), 4)] += 1;
        }
        assert!(seen.iter().all(|n| *n > 180), "{seen:?}");
        assert_eq!(worker_of(b"x", 4), worker_of(b"x", 4));
    }
}
