//! Beacon parsing: one pass of serde_json over the body, borrowing strings from it.
//!
//! Every field is read leniently (any JSON value), so that a wrongly typed field rejects
//! only its own event with a reason, while malformed JSON rejects the whole batch.

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;
use tally_delta::{Device, Source};

/// The kinds of event a player sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Playback started.
    Play,
    /// Periodic while the player is open.
    Heartbeat,
    /// Playback paused (the viewer stays connected).
    Pause,
    /// Playback resumed.
    Resume,
    /// Reached the end.
    Complete,
    /// Player closed.
    Leave,
    /// Liked the video.
    Like,
    /// Took a like back.
    Unlike,
    /// Shared.
    Share,
    /// Commented.
    Comment,
}

impl EventType {
    fn parse(s: &str) -> Option<EventType> {
        Some(match s {
            "play" => EventType::Play,
            "heartbeat" => EventType::Heartbeat,
            "pause" => EventType::Pause,
            "resume" => EventType::Resume,
            "complete" => EventType::Complete,
            "leave" => EventType::Leave,
            "like" => EventType::Like,
            "unlike" => EventType::Unlike,
            "share" => EventType::Share,
            "comment" => EventType::Comment,
            _ => return None,
        })
    }

    /// Whether the event is part of playback (and so can start a view).
    pub fn is_playback(self) -> bool {
        matches!(
            self,
            EventType::Play
                | EventType::Heartbeat
                | EventType::Pause
                | EventType::Resume
                | EventType::Complete
                | EventType::Leave
        )
    }
}

/// A JSON value as far as beacon validation needs to know it.
#[derive(Debug)]
pub(crate) enum Val<'a> {
    Str(Cow<'a, str>),
    Num(f64),
    Bool,
    Null,
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Val<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Val<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Val<'de>, E> {
                Ok(Val::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Val<'de>, E> {
                Ok(Val::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Val<'de>, E> {
                Ok(Val::Str(Cow::Owned(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Val<'de>, E> {
                Ok(Val::Num(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Val<'de>, E> {
                Ok(Val::Num(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Val<'de>, E> {
                Ok(Val::Num(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Val<'de>, E> {
                let _ = v;
                Ok(Val::Bool)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Val<'de>, E> {
                Ok(Val::Null)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Val<'de>, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Val::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Val<'de>, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Val::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// An event as it arrived, every field still unchecked.
#[derive(Default, Debug)]
pub(crate) struct RawEvent<'a> {
    event_id: Option<Val<'a>>,
    session_id: Option<Val<'a>>,
    user_id: Option<Val<'a>>,
    video_id: Option<Val<'a>>,
    kind: Option<Val<'a>>,
    ts: Option<Val<'a>>,
    position_s: Option<Val<'a>>,
    device: Option<Val<'a>>,
    source: Option<Val<'a>>,
    token: Option<Val<'a>>,
}

/// The keys of an event object, matched without allocating.
enum Field {
    EventId,
    SessionId,
    UserId,
    VideoId,
    Kind,
    Ts,
    PositionS,
    Device,
    Source,
    Token,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                Ok(match v {
                    "event_id" => Field::EventId,
                    "session_id" => Field::SessionId,
                    "user_id" => Field::UserId,
                    "video_id" => Field::VideoId,
                    "type" => Field::Kind,
                    "ts" => Field::Ts,
                    "position_s" => Field::PositionS,
                    "device" => Field::Device,
                    "source" => Field::Source,
                    "token" => Field::Token,
                    _ => Field::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

/// Reads an event object in one pass: each known key's value straight into its slot,
/// unknown keys skipped, a repeated key an error (as serde's derive would).
impl<'de: 'a, 'a> Deserialize<'de> for RawEvent<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawEvent<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<RawEvent<'a>, A::Error> {
                let mut e = RawEvent::default();
                while let Some(key) = m.next_key::<Field>()? {
                    let (slot, name) = match key {
                        Field::EventId => (&mut e.event_id, "event_id"),
                        Field::SessionId => (&mut e.session_id, "session_id"),
                        Field::UserId => (&mut e.user_id, "user_id"),
                        Field::VideoId => (&mut e.video_id, "video_id"),
                        Field::Kind => (&mut e.kind, "type"),
                        Field::Ts => (&mut e.ts, "ts"),
                        Field::PositionS => (&mut e.position_s, "position_s"),
                        Field::Device => (&mut e.device, "device"),
                        Field::Source => (&mut e.source, "source"),
                        Field::Token => (&mut e.token, "token"),
                        Field::Other => {
                            m.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if slot.is_some() {
                        return Err(de::Error::duplicate_field(name));
                    }
                    *slot = Some(m.next_value()?);
                }
                Ok(e)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Deserialises the events array into a vector sized up front from the body length.
struct EventsSeed(usize);

impl<'de> de::DeserializeSeed<'de> for EventsSeed {
    type Value = Vec<RawEvent<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EventsSeed {
    type Value = Vec<RawEvent<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of events")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(self.0);
        while let Some(e) = seq.next_element()? {
            out.push(e);
        }
        Ok(out)
    }
}

/// `{"events": [...]}`; other keys are ignored, and a repeated `events` key is an error
/// (never a silent pick of one of them: the router and the counter must read the same
/// events).
struct EnvelopeSeed(usize);

impl<'de> de::DeserializeSeed<'de> for EnvelopeSeed {
    type Value = Vec<RawEvent<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EnvelopeSeed {
    type Value = Vec<RawEvent<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with an \"events\" array")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        let mut events = None;
        while let Some(k) = m.next_key::<Cow<'de, str>>()? {
            if k == "events" {
                if events.is_some() {
                    return Err(de::Error::duplicate_field("events"));
                }
                events = Some(m.next_value_seed(EventsSeed(self.0))?);
            } else {
                m.next_value::<IgnoredAny>()?;
            }
        }
        events.ok_or_else(|| de::Error::missing_field("events"))
    }
}

/// A syntactically valid event with every field checked.
#[derive(Debug)]
pub struct Event<'a> {
    /// Client-made id, stable across retries.
    pub event_id: Cow<'a, str>,
    /// Player session.
    pub session_id: Cow<'a, str>,
    /// Signed-in user, when there is one.
    pub user_id: Option<Cow<'a, str>>,
    /// Video id.
    pub video_id: Cow<'a, str>,
    /// What happened.
    pub kind: EventType,
    /// Client event time, ms since the Unix epoch.
    pub ts_ms: u64,
    /// Playback position in ms, when sent.
    pub position_ms: Option<u64>,
    /// Device, when sent.
    pub device: Option<Device>,
    /// Traffic source (`other` when not sent).
    pub source: Source,
    /// Playback token.
    pub token: Cow<'a, str>,
}

/// The longest id (event, session, user, video) accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// The longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 1024;

/// The session id of each event as this parser reads the body (`None` for an event
/// without a string `session_id`), or `None` when the body is not a beacon at all. The
/// router ([`crate::route::sessions`]) must agree with it on every event the collector
/// could count; a fuzz target checks that.
pub fn event_sessions(body: &[u8]) -> Option<Vec<Option<String>>> {
    let events = parse_batch(body).ok()?;
    Some(
        events
            .into_iter()
            .map(|e| match e.session_id {
                Some(Val::Str(s)) => Some(s.into_owned()),
                _ => None,
            })
            .collect(),
    )
}

/// Whether a collector could count anything of this body: it parses, and some event is
/// well-formed, names the video and session its token signs, and carries a token whose
/// signature verifies under `token_key`. Cheap (one parse, at most one HMAC per distinct
/// token), so a host runs it before it makes a beacon durable: a `false` body is one the
/// collector refuses whole, and nothing of it need be logged.
pub fn may_count(body: &[u8], token_key: &[u8], max_body_bytes: usize) -> bool {
    if body.len() > max_body_bytes {
        return false;
    }
    let Ok(mut events) = parse_batch(body) else {
        return false;
    };
    let mut refused: Vec<u64> = Vec::new();
    for raw in &mut events {
        let Ok(ev) = raw.validate() else {
            continue;
        };
        let h = xxhash_rust::xxh3::xxh3_64(ev.token.as_bytes());
        if refused.contains(&h) {
            continue;
        }
        match crate::token::verify(token_key, &ev.token) {
            Ok(c) if c.video == ev.video_id && c.session == ev.session_id => return true,
            _ => refused.push(h),
        }
    }
    false
}

/// Parses the body into raw events; fails only when the body is not a beacon at all.
pub(crate) fn parse_batch(body: &[u8]) -> Result<Vec<RawEvent<'_>>, String> {
    // One fast UTF-8 check of the whole body, so strings need no check of their own.
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    // Events are rarely under 150 bytes: size the vector once.
    let capacity = (body.len() / 150).min(1024);
    let mut de = serde_json::Deserializer::from_str(text);
    let events = match text.trim_start().as_bytes().first() {
        Some(b'[') => de::DeserializeSeed::deserialize(EventsSeed(capacity), &mut de),
        Some(b'{') => de::DeserializeSeed::deserialize(EnvelopeSeed(capacity), &mut de),
        None => return Err("empty body".into()),
        Some(_) => return Err("expected a JSON array of events or an object with an \"events\" array".into()),
    };
    let events = events.and_then(|e| de.end().map(|()| e)).map_err(|e| e.to_string())?;
    Ok(events)
}

fn string<'a>(v: Option<Val<'a>>, field: &'static str, max: usize) -> Result<Cow<'a, str>, String> {
    match v {
        Some(Val::Str(s)) if s.is_empty() => Err(format!("{field} is empty")),
        Some(Val::Str(s)) if s.len() > max => Err(format!("{field} is longer than {max} bytes")),
        Some(Val::Str(s)) => Ok(s),
        None | Some(Val::Null) => Err(format!("{field} is missing")),
        Some(_) => Err(format!("{field} must be a string")),
    }
}

fn optional_str<'a>(v: Option<Val<'a>>, field: &'static str) -> Result<Option<Cow<'a, str>>, String> {
    match v {
        None | Some(Val::Null) => Ok(None),
        other => string(other, field, MAX_ID_LEN).map(Some),
    }
}

fn non_negative(v: Option<Val<'_>>, field: &'static str, scale: f64) -> Result<Option<u64>, String> {
    match v {
        None | Some(Val::Null) => Ok(None),
        Some(Val::Num(n)) if n.is_finite() && n >= 0.0 && n * scale < 9.0e15 => Ok(Some((n * scale).round() as u64)),
        Some(Val::Num(_)) => Err(format!("{field} is out of range")),
        Some(_) => Err(format!("{field} must be a number")),
    }
}

impl<'a> RawEvent<'a> {
    /// Checks every field, returning the first problem.
    /// Takes the fields out (no copy of the whole event).
    pub(crate) fn validate(&mut self) -> Result<Event<'a>, String> {
        let kind = match self.kind.take() {
            Some(Val::Str(s)) => EventType::parse(&s).ok_or_else(|| format!("unknown type \"{s}\""))?,
            None | Some(Val::Null) => return Err("type is missing".into()),
            Some(_) => return Err("type must be a string".into()),
        };
        let device = match self.device.take() {
            None | Some(Val::Null) => None,
            Some(Val::Str(s)) => Some(Device::parse(&s).ok_or_else(|| format!("unknown device \"{s}\""))?),
            Some(_) => return Err("device must be a string".into()),
        };
        let source = match self.source.take() {
            None | Some(Val::Null) => Source::Other,
            Some(Val::Str(s)) => Source::parse(&s).ok_or_else(|| format!("unknown source \"{s}\""))?,
            Some(_) => return Err("source must be a string".into()),
        };
        Ok(Event {
            event_id: string(self.event_id.take(), "event_id", MAX_ID_LEN)?,
            session_id: string(self.session_id.take(), "session_id", MAX_ID_LEN)?,
            user_id: optional_str(self.user_id.take(), "user_id")?,
            video_id: string(self.video_id.take(), "video_id", MAX_ID_LEN)?,
            kind,
            ts_ms: non_negative(self.ts.take(), "ts", 1.0)?.ok_or("ts is missing")?,
            position_ms: non_negative(self.position_s.take(), "position_s", 1000.0)?,
            device,
            source,
            token: string(self.token.take(), "token", MAX_TOKEN_LEN)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"event_id":"e1","session_id":"s1","video_id":"v1","type":"play","ts":1700000000000,"position_s":1.5,"device":"tv","source":"search","token":"t","extra":{"a":[1,2]}}"#;

    #[test]
    fn both_shapes_parse() {
        assert_eq!(parse_batch(format!("[{GOOD}]").as_bytes()).unwrap().len(), 1);
        assert_eq!(
            parse_batch(format!(r#"{{"events":[{GOOD},{GOOD}]}}"#).as_bytes())
                .unwrap()
                .len(),
            2
        );
        let one = format!("[{GOOD}]");
        let e = parse_batch(one.as_bytes()).unwrap().pop().unwrap().validate().unwrap();
        assert_eq!(
            (e.kind, e.ts_ms, e.position_ms, e.device),
            (EventType::Play, 1_700_000_000_000, Some(1500), Some(Device::Tv))
        );
    }

    #[test]
    fn malformed_json_fails_the_batch() {
        assert!(parse_batch(b"[{\"event_id\":").is_err());
        assert!(parse_batch(b"").is_err());
        assert!(parse_batch(b"42").is_err());
    }

    #[test]
    fn wrong_fields_fail_only_their_event() {
        let body = r#"[{"event_id":"e","session_id":"s","video_id":"v","type":"jump","ts":1,"token":"t"},
                       {"event_id":5,"session_id":"s","video_id":"v","type":"play","ts":1,"token":"t"},
                       {"event_id":"e","session_id":"s","video_id":"v","type":"play","ts":-1,"token":"t"},
                       {"event_id":"e","session_id":"s","video_id":"v","type":"play","ts":1}]"#;
        let reasons: Vec<String> = parse_batch(body.as_bytes())
            .unwrap()
            .into_iter()
            .map(|mut r| r.validate().unwrap_err())
            .collect();
        assert_eq!(
            reasons,
            [
                "unknown type \"jump\"",
                "event_id must be a string",
                "ts is out of range",
                "token is missing"
            ]
        );
    }

    #[test]
    fn nulls_read_as_absent_and_repeated_keys_fail_the_batch() {
        let body = r#"[{"event_id":"e","session_id":"s","video_id":"v","type":"play","ts":1,"token":"t","user_id":null,"device":null}]"#;
        let e = parse_batch(body.as_bytes()).unwrap().pop().unwrap().validate().unwrap();
        assert_eq!((e.user_id, e.device), (None, None));
        let body = r#"[{"event_id":"e","event_id":"f"}]"#;
        assert!(parse_batch(body.as_bytes()).unwrap_err().contains("duplicate field"));
    }

    #[test]
    fn a_repeated_events_key_fails_the_batch_and_the_router_agrees_nothing_is_countable() {
        // the attack: the router could not read a body with two `events` keys (so it
        // skipped the per-session limits), while a first-wins parser counted the first
        let body = format!(r#"{{"events":[{GOOD}],"events":[],"pad":"\u0041"}}"#);
        let err = parse_batch(body.as_bytes()).unwrap_err();
        assert!(err.contains("duplicate field `events`"), "{err}");
        assert_eq!(event_sessions(body.as_bytes()), None);
        // one `events` key still parses, with other keys beside it
        let body = format!(r#"{{"pad":"\u0041","events":[{GOOD}]}}"#);
        assert_eq!(event_sessions(body.as_bytes()), Some(vec![Some("s1".to_owned())]));
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let body = r#"[{"event_id":"e\u0031","session_id":"s","video_id":"v","type":"play","ts":1,"token":"t"}]"#;
        let e = parse_batch(body.as_bytes()).unwrap().pop().unwrap().validate().unwrap();
        assert_eq!(e.event_id, "e1");
    }
}
