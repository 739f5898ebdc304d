//! Conformance scenarios: a script of beacons and flushes plus what must come out.
//!
//! Each scenario is run against the native core and the wasm component; the tests
//! assert both produce identical outcomes and frames, then apply the scenario's check.

use crate::{Driver, Ev, Kit, body, decode};
use tally_collector::{
    BatchError, Claims, Config, IngestOutcome, RejectReason, RequestFacts, Stats, TOKEN_EVENTS_PER_INTERVAL, TokenError,
};
use tally_delta::{Counts, DeltaFrame, MergedDeltas};

const MIN: u64 = 60_000;

/// One thing the host does to a collector.
#[derive(Clone, Debug)]
pub enum Step {
    /// Deliver a beacon body.
    Ingest {
        /// The body.
        body: Vec<u8>,
        /// Facts of its request.
        facts: RequestFacts,
    },
    /// Close the interval.
    Flush {
        /// The host's now.
        now_ms: u64,
    },
}

/// Everything a collector returned for a script.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// One per `Ingest` step, in order.
    pub outcomes: Vec<Result<IngestOutcome, BatchError>>,
    /// One encoded frame per `Flush` step.
    pub frames: Vec<Vec<u8>>,
    /// Stats at the end.
    pub stats: Stats,
}

impl Run {
    /// All frames merged.
    pub fn merged(&self) -> MergedDeltas {
        let mut m = MergedDeltas::default();
        for f in &self.frames {
            m.apply(&decode(f))
                .unwrap_or_else(|e| panic!("frame does not merge: {e}"));
        }
        m
    }

    /// Totals over all frames.
    pub fn total(&self) -> Counts {
        self.merged().total()
    }

    /// The outcome of the `i`th beacon, which must have parsed.
    pub fn ok(&self, i: usize) -> &IngestOutcome {
        match &self.outcomes[i] {
            Ok(o) => o,
            Err(e) => panic!("beacon {i} was refused as a whole: {e}"),
        }
    }
}

/// Runs a script.
pub fn run(driver: &mut dyn Driver, steps: &[Step]) -> Run {
    let mut r = Run {
        outcomes: Vec::new(),
        frames: Vec::new(),
        stats: Stats::default(),
    };
    for s in steps {
        match s {
            Step::Ingest { body, facts } => r.outcomes.push(driver.ingest(body, facts)),
            Step::Flush { now_ms } => r.frames.push(driver.flush(*now_ms)),
        }
    }
    r.stats = driver.stats();
    r
}

/// A named script with its config and check.
pub struct Scenario {
    /// What it exercises.
    pub name: &'static str,
    /// Collector config.
    pub config: Config,
    /// The script.
    pub steps: Vec<Step>,
    /// Assertions on the (native) run.
    pub check: fn(&Run),
}

struct Script {
    kit: Kit,
    steps: Vec<Step>,
}

impl Script {
    fn new() -> Script {
        Script {
            kit: Kit::default(),
            steps: Vec::new(),
        }
    }
    fn send(&mut self, at_ms: u64, events: &[Ev]) -> &mut Self {
        let b = body(events);
        self.raw(at_ms, b)
    }
    fn raw(&mut self, at_ms: u64, body: Vec<u8>) -> &mut Self {
        self.steps.push(Step::Ingest {
            body,
            facts: self.kit.facts(at_ms),
        });
        self
    }
    /// A beacon the host classified as a bot (`why`).
    fn bot(&mut self, at_ms: u64, events: &[Ev], why: &str) -> &mut Self {
        self.bot_raw(at_ms, body(events), why)
    }
    /// A raw body the host classified as a bot (`why`).
    fn bot_raw(&mut self, at_ms: u64, body: Vec<u8>, why: &str) -> &mut Self {
        let mut facts = self.kit.facts(at_ms);
        facts.bot = Some(why.into());
        self.steps.push(Step::Ingest { body, facts });
        self
    }
    fn flush(&mut self, at_ms: u64) -> &mut Self {
        self.steps.push(Step::Flush {
            now_ms: self.kit.t0 + at_ms,
        });
        self
    }
    fn done(&mut self, name: &'static str, check: fn(&Run)) -> Scenario {
        self.done_with(name, self.kit.config(), check)
    }
    fn done_with(&mut self, name: &'static str, config: Config, check: fn(&Run)) -> Scenario {
        Scenario {
            name,
            config,
            steps: std::mem::take(&mut self.steps),
            check,
        }
    }
}

/// 2,000 sessions play v1 over 20 s, then session 0 refreshes at 30 s.
fn sessions_then_refresh(s: &mut Script, k: &Kit) {
    for chunk in 0..20u64 {
        let evs: Vec<Ev> = (0..100)
            .map(|i| {
                let n = chunk * 100 + i;
                k.ev(&format!("p{n}"), &format!("s{n}"), "v1", "play", chunk * 1_000)
            })
            .collect();
        s.send(chunk * 1_000, &evs);
    }
    s.send(30_000, &[k.ev("refresh", "s0", "v1", "play", 30_000)])
        .flush(31_000);
}

fn rejected(run: &Run, i: usize) -> Vec<(u32, RejectReason)> {
    run.ok(i).rejected.iter().map(|r| (r.index, r.reason.clone())).collect()
}

/// Every conformance scenario.
pub fn all() -> Vec<Scenario> {
    let mut out = Vec::new();
    let k = Kit::default();
    let mut s = Script::new();

    // A page refresh: same session, the player starts over with new event ids.
    s.send(0, &[k.ev("a1", "s1", "v1", "play", 0)])
        .send(20_000, &[k.ev("a2", "s1", "v1", "play", 20_000)])
        .flush(30_000);
    out.push(s.done("page refresh in the same session counts once", |r| {
        assert_eq!(r.total().views, 1);
        assert_eq!(
            r.ok(1).duplicates,
            0,
            "new event ids are not duplicates, the view rule dedups"
        );
    }));

    // An idle edge ships nothing: an interval without events gives an empty frame
    // numbered 0, and the next real frame takes the next number (no gap at the merger).
    s.flush(1_000)
        .send(1_500, &[k.ev("i1", "s1", "v1", "play", 1_500)])
        .flush(2_000)
        .flush(3_000)
        .flush(4_000)
        .send(4_500, &[k.ev("i2", "s2", "v1", "play", 4_500)])
        .flush(5_000);
    out.push(s.done("idle intervals give empty unnumbered frames", |r| {
        let frames: Vec<DeltaFrame> = r.frames.iter().map(|f| decode(f)).collect();
        let seqs: Vec<u64> = frames.iter().map(|f| f.header.id.seq).collect();
        let empty: Vec<bool> = frames.iter().map(DeltaFrame::is_empty).collect();
        assert_eq!(seqs, vec![0, 1, 0, 0, 2]);
        assert_eq!(empty, vec![true, false, true, true, false]);
        assert_eq!(r.stats.frames, 2);
    }));

    // A network retry resends the same beacon.
    let beacon = [k.ev("b1", "s1", "v1", "play", 0), k.ev("b2", "s1", "v1", "share", 100)];
    s.send(0, &beacon).send(5_000, &beacon).flush(10_000);
    out.push(s.done("network retry of the same beacon counts once", |r| {
        assert_eq!((r.ok(1).accepted, r.ok(1).duplicates), (2, 2));
        let t = r.total();
        assert_eq!((t.views, t.shares), (1, 1));
        assert_eq!(r.stats.duplicates, 2);
    }));

    s.send(
        0,
        &[
            k.ev("c1", "s1", "v1", "play", 0),
            k.ev("c1", "s1", "v1", "play", 0),
            k.ev("c2", "s1", "v1", "comment", 10),
        ],
    )
    .flush(1_000);
    out.push(s.done("duplicated events inside one batch count once", |r| {
        assert_eq!((r.ok(0).accepted, r.ok(0).duplicates), (3, 1));
        assert_eq!((r.total().views, r.total().comments), (1, 1));
    }));

    // A view is one per (session, video). After the dedup window the collector has
    // forgotten the session and ships the view again, with the same key: the merger's
    // fact set counts it once. The original beacon resent inside the window is a
    // duplicate at the collector already.
    let first = [k.ev("d1", "s1", "v1", "play", 0)];
    s.send(0, &first)
        .send(2 * MIN, &first)
        .flush(3 * MIN)
        .send(35 * MIN, &[k.ev("d2", "s1", "v1", "play", 35 * MIN)])
        .flush(36 * MIN);
    out.push(s.done("a session back after the dedup window is still one view", |r| {
        assert_eq!(r.ok(1).duplicates, 1);
        assert_eq!(decode(&r.frames[0]).total_views(), 1);
        assert_eq!(decode(&r.frames[1]).total_views(), 1, "the collector forgot it");
        let m = r.merged();
        assert_eq!(m.total().views, 1, "the merger did not");
        assert_eq!(m.facts.stats.duplicates[0], 1);
    }));

    s.send(
        0,
        &[
            k.ev("e1", "s1", "v1", "play", 0).user("u1"),
            k.ev("e2", "s2", "v1", "play", 1_000).user("u1"),
        ],
    )
    .flush(2_000);
    out.push(
        s.done("a second session of the same user is a second view, one unique", |r| {
            let m = r.merged();
            assert_eq!(m.total().views, 2);
            assert_eq!(m.uniques_of("v1").round() as u64, 1);
        }),
    );

    s.send(0, &[k.ev("f1", "s1", "v1", "like", 0).user("u1")])
        .send(1_000, &[k.ev("f2", "s1", "v1", "unlike", 1_000).user("u1")])
        .send(2_000, &[k.ev("f3", "s1", "v1", "like", 2_000).user("u1")])
        .send(3_000, &[k.ev("f4", "s9", "v1", "like", 3_000).user("u1")])
        .send(3_000, &[k.ev("f5", "s2", "v1", "like", 3_000).user("u2")])
        .flush(4_000);
    out.push(s.done("like, unlike, like nets one like per user", |r| {
        assert_eq!(r.total().likes, 2);
        assert_eq!(r.total().views, 0, "engagement alone is not a view");
    }));

    s.send(
        2 * 3_600_000,
        &[
            k.ev("g1", "s1", "v1", "play", 0), // two hours late: its own minute
            k.ev("g2", "s2", "v1", "play", 2 * 3_600_000 + 10 * MIN), // ten minutes ahead
            k.ev("g3", "s3", "v1", "play", 2 * 3_600_000), // on time
        ],
    )
    .send(26 * 3_600_000, &[k.ev("g4", "s4", "v1", "play", MIN)]) // 25 h late
    .flush(26 * 3_600_000);
    out.push(s.done(
        "late events land in their own minute; too late and future are refused",
        |r| {
            let k = Kit::default();
            assert_eq!(rejected(r, 0), vec![(1, RejectReason::InFuture { skew_ms: 2 * MIN })]);
            assert_eq!(
                rejected(r, 1),
                vec![(
                    0,
                    RejectReason::TooLate {
                        lateness_ms: 24 * 3_600_000
                    }
                )]
            );
            let f = decode(&r.frames[0]);
            let mut minutes: Vec<u32> = f.counters.iter().map(|c| c.minute).collect();
            minutes.sort();
            let m0 = (k.t0 / MIN) as u32;
            assert_eq!(minutes, vec![m0, m0 + 120]);
            assert_eq!(r.stats.late_events, 1);
        },
    ));

    s.raw(0, b"{\"events\": [{\"event_id\": \"x\"".to_vec())
        .raw(0, b"not json".to_vec())
        .raw(0, b"{\"events\": 5}".to_vec())
        .send(0, &[k.ev("h1", "s1", "v1", "play", 0)])
        .flush(1_000);
    out.push(s.done("malformed JSON is refused as a whole and counts nothing", |r| {
        for i in 0..3 {
            assert!(
                matches!(r.outcomes[i], Err(BatchError::Malformed(_))),
                "beacon {i}: {:?}",
                r.outcomes[i]
            );
        }
        assert_eq!(r.total().views, 1, "the good beacon after the bad ones still counts");
        assert_eq!(r.stats.batches_rejected, 3);
    }));

    let mut big: Vec<Ev> = (0..300)
        .map(|i| k.ev(&format!("i{i}"), &format!("s{i}"), "v1", "play", 0))
        .collect();
    for e in &mut big {
        e.source = "x".repeat(200);
    }
    let many = format!("[{}{{}}]", "{},".repeat(500)).into_bytes();
    s.send(0, &big).raw(0, many).flush(1_000);
    out.push(
        s.done("oversized bodies and batches are refused with their sizes", |r| {
            match &r.outcomes[0] {
                Err(BatchError::TooLarge { size, limit }) => assert!(*size > *limit as usize && *limit == 65_536),
                other => panic!("expected too large, got {other:?}"),
            }
            assert!(matches!(
                r.outcomes[1],
                Err(BatchError::TooManyEvents { count: 501, limit: 500 })
            ));
            assert_eq!(r.total().views, 0);
        }),
    );

    let other_key = Kit {
        key: b"some-other-signing-key-0000".to_vec(),
        ..Kit::default()
    };
    s.send(
        0,
        &[
            k.ev("k1", "s1", "v1", "play", 0).token(&other_key.token("v1", "s1", false)),
            k.ev("k2", "s2", "v1", "play", 0).token("garbage"),
            k.ev("k3", "s3", "v1", "play", 0).token(&k.token("v2", "s3", false)),
            k.ev("k4", "s4", "v1", "play", 0)
                .token(&k.token_expiring("v1", "s4", false, k.t0 / 1000 - 1)),
            k.ev("k5", "s5", "v1", "play", 0),
            // one harvested token used for another session: no second view
            k.ev("k6", "s6", "v1", "play", 0).token(&k.token("v1", "s5", false)),
            // an event dated before its token was minted
            k.ev("k7", "s7", "v1", "play", 0).token(&k.token_with(&Claims {
                issued_s: k.t0 / 1000 + 3_600,
                ..k.claims("v1", "s7")
            })),
        ],
    )
    .flush(1_000);
    out.push(
        s.done("bad, expired and misdirected tokens are refused per event", |r| {
            assert_eq!(
                rejected(r, 0),
                vec![
                    (0, RejectReason::Token(TokenError::BadSignature)),
                    (1, RejectReason::Token(TokenError::Malformed)),
                    (2, RejectReason::TokenForOtherVideo),
                    (3, RejectReason::Token(TokenError::Expired)),
                    (5, RejectReason::TokenForOtherSession),
                    (6, RejectReason::Token(TokenError::NotYetValid)),
                ]
            );
            assert_eq!(r.total().views, 1);
            let f = decode(&r.frames[0]);
            assert_eq!(f.str(f.counters[0].channel), "ch-1", "channel comes from the token");
        }),
    );

    // A token minted at t0 arriving a minute later: events dated up to the clock skew
    // ahead claim three minutes and then a day of playback; the arrival time allows one
    // minute (plus the two seconds of slack).
    let minted_now = k.token_with(&Claims {
        issued_s: k.t0 / 1000,
        ..k.claims("v1", "w1")
    });
    s.send(
        60_000,
        &[
            k.ev("w-1", "w1", "v1", "play", 0).at(0.0).token(&minted_now),
            k.ev("w-2", "w1", "v1", "heartbeat", 180_000)
                .at(86_400.0)
                .token(&minted_now),
        ],
    )
    .flush(61_000);
    out.push(s.done(
        "watch time is capped by the arrival time since the token was minted",
        |r| {
            assert!(r.ok(0).rejected.is_empty(), "{:?}", r.ok(0).rejected);
            let w = r.total().watch_ms;
            assert_eq!(w, 62_000, "one minute since minting plus slack, not a day");
        },
    ));

    // One token carrying more events in one interval than a player could send.
    let flood: Vec<Ev> = (0..TOKEN_EVENTS_PER_INTERVAL + 20)
        .map(|i| k.ev(&format!("f{i}"), "f1", "v1", "heartbeat", 0))
        .collect();
    for chunk in flood.chunks(100) {
        s.send(0, chunk);
    }
    s.flush(1_000).send(1_500, &[k.ev("f-next", "f1", "v1", "like", 1_500)]).flush(2_000);
    out.push(s.done("events beyond the per-token rate in an interval are refused", |r| {
        let beacons = (TOKEN_EVENTS_PER_INTERVAL as usize + 20).div_ceil(100);
        let refused: usize = (0..beacons)
            .map(|i| {
                r.ok(i)
                    .rejected
                    .iter()
                    .filter(|x| x.reason == RejectReason::TokenRate { limit: TOKEN_EVENTS_PER_INTERVAL })
                    .count()
            })
            .sum();
        assert_eq!(refused, 20);
        assert!(r.ok(beacons).rejected.is_empty(), "a new interval takes the token again");
        assert_eq!(r.total().likes, 1);
    }));

    // A request the host classified as a bot: refused with that reason, counted as filtered.
    s.bot(0, &[k.ev("b1", "b1", "v1", "play", 0), k.ev("b2", "b1", "v1", "like", 0)], "user-agent")
        .send(0, &[k.ev("h1", "h1", "v1", "play", 0)])
        .bot_raw(0, br#"{"events":[{},{},{},{"event_id":"x"}]}"#.to_vec(), "user-agent")
        .bot(
            0,
            &(0..30)
                .map(|i| k.ev(&format!("bb{i}"), "b2", "v1", "heartbeat", 0))
                .collect::<Vec<_>>(),
            "user-agent",
        )
        .flush(1_000);
    out.push(s.done("bots are refused with the reason bot and counted as filtered", |r| {
        assert_eq!(r.ok(0).accepted, 0);
        assert!(r.ok(0).rejected.iter().all(|x| x.reason == RejectReason::Bot));
        assert_eq!(r.ok(0).rejected.len(), 2);
        assert_eq!(r.ok(2).rejected.len(), 4, "a padded bot request is refused whole");
        assert_eq!(r.total().views, 1, "only the person's view counts");
        assert_eq!(r.total().likes, 0);
        let f = decode(&r.frames[0]);
        // only well-formed events count as filtered bot events, not the padding, and at
        // most BOT_EVENTS_PER_REQUEST of one request
        let most = tally_collector::BOT_EVENTS_PER_REQUEST;
        assert_eq!((f.intake.bots, f.intake.rejected, f.intake.accepted), (2 + most, 36, 1));
        assert_eq!(r.stats.bot_events, 2 + most);
    }));

    s.send(
        0,
        &[
            k.ev("m1", "s1", "v1", "play", 0),
            Ev {
                kind: "jump".into(),
                ..k.ev("m2", "s1", "v1", "play", 0)
            },
            Ev {
                device: "toaster".into(),
                ..k.ev("m3", "s2", "v1", "play", 0)
            },
            Ev {
                session_id: String::new(),
                ..k.ev("m4", "s3", "v1", "play", 0)
            },
            k.ev("m5", "s4", "v1", "play", 0),
        ],
    )
    .flush(1_000);
    out.push(
        s.done("a batch with bad events accepts the good ones and names the bad", |r| {
            assert_eq!(r.ok(0).accepted, 2);
            assert_eq!(
                rejected(r, 0),
                vec![
                    (1, RejectReason::Invalid("unknown type \"jump\"".into())),
                    (2, RejectReason::Invalid("unknown device \"toaster\"".into())),
                    (3, RejectReason::Invalid("session_id is empty".into())),
                ]
            );
            assert_eq!(r.total().views, 2);
        }),
    );

    s.send(
        0,
        &[
            k.ev("w1", "s1", "v1", "play", 0).at(0.0),
            k.ev("w2", "s1", "v1", "heartbeat", 10_000).at(10.0),
            k.ev("w3", "s1", "v1", "heartbeat", 20_000).at(20.0),
            k.ev("w4", "s1", "v1", "heartbeat", 30_000).at(500.0), // seek: wall time (+slack) counts
            k.ev("w5", "s1", "v1", "complete", 40_000).at(510.0),
            k.ev("w6", "s1", "v1", "complete", 41_000).at(510.0),
        ],
    )
    .flush(60_000);
    out.push(
        s.done("watch time follows playback progress, completion counts once", |r| {
            let t = r.total();
            assert_eq!(t.watch_ms, 20_000 + 12_000 + 10_000);
            assert_eq!((t.views, t.completions), (1, 1));
        }),
    );

    s.send(
        0,
        &[
            k.ev("n1", "s1", "v1", "play", 0).at(0.0),
            k.ev("n2", "s1", "v1", "heartbeat", 10_000).at(10.0),
        ],
    )
    .flush(20_000)
    .send(40_000, &[k.ev("n3", "s1", "v1", "heartbeat", 40_000).at(40.0)])
    .flush(60_000);
    let mut cfg = k.config();
    cfg.min_watch_ms = 30_000;
    out.push(s.done_with(
        "with a minimum watch time the view counts once it is reached",
        cfg,
        |r| {
            assert_eq!(decode(&r.frames[0]).total_views(), 0);
            assert_eq!(decode(&r.frames[1]).total_views(), 1);
        },
    ));

    let live =
        |id: &str, sess: &str, kind: &str, at: u64| k.ev(id, sess, "live1", kind, at).token(&k.token("live1", sess, true));
    s.send(
        0,
        &[
            live("l1", "s1", "play", 0),
            live("l2", "s2", "play", 0),
            live("l3", "s3", "play", 0),
            // a session whose play this collector never saw (it moved POP)
            live("l9", "s4", "heartbeat", 0),
        ],
    )
    .send(
        5_000,
        &[live("l4", "s2", "pause", 5_000), live("l5", "s3", "leave", 5_000)],
    )
    .flush(6_000)
    // a paused player keeps beating: it stays connected until it resumes
    .send(10_000, &[live("l7", "s2", "heartbeat", 10_000)])
    .send(20_000, &[live("l6", "s1", "heartbeat", 20_000)])
    .flush(25_000)
    .send(40_000, &[live("l8", "s2", "resume", 40_000)])
    .flush(45_000)
    .flush(60_000);
    out.push(s.done(
        "live sessions send beats: watching, connected until resumed, gone on leave",
        |r| {
            let beats = |i: usize| {
                let f = decode(&r.frames[i]);
                assert!(f.live.is_empty(), "no edge-wide gauges");
                f.live_beats
                    .iter()
                    .map(|b| (f.str(b.stream).to_owned(), b.status))
                    .collect::<Vec<_>>()
            };
            use tally_delta::LiveStatus::{Beating, Connected, Gone, Watching};
            let mut first = beats(0);
            first.sort();
            let l = || "live1".to_owned();
            assert_eq!(
                first,
                vec![(l(), Watching), (l(), Connected), (l(), Gone), (l(), Beating)]
            );
            let mut second = beats(1);
            second.sort();
            assert_eq!(
                second,
                vec![(l(), Watching), (l(), Connected)],
                "s1 beats, s2 still paused"
            );
            assert_eq!(beats(2), vec![(l(), Watching)], "s2 resumed");
            // nothing seen in the last interval: no beats; s1 timed out here but may
            // have moved POP, so no Gone either (the merger expires it on its clock)
            assert_eq!(beats(3), vec![]);
            assert_eq!(r.stats.live_sessions, 1);
            let m = r.merged();
            assert_eq!(m.live_of("live1"), (3, 0), "s1, s2 and s4 (status unknown: watching)");
        },
    ));

    // 2,000 sessions overflow a 64 KiB budget: the oldest entries are evicted, counted in
    // stats, and a refresh of an evicted session ships its view again, which the
    // merger's fact set refuses: eviction costs wire bytes, never accuracy.
    sessions_then_refresh(&mut s, &k);
    let mut cfg = k.config();
    cfg.memory_budget_bytes = 64 << 10;
    out.push(s.done_with(
        "over the memory budget the oldest dedup entries are evicted",
        cfg,
        |r| {
            assert!(r.stats.dedup_evictions > 0);
            assert!(
                r.stats.memory_bytes <= 64 << 10,
                "memory {} over budget",
                r.stats.memory_bytes
            );
            let shipped: u64 = r.frames.iter().map(|f| decode(f).total_views()).sum();
            assert_eq!(shipped, 2_001, "the evicted session's refresh was shipped again");
            assert_eq!(r.total().views, 2_000, "and counted once");
        },
    ));
    sessions_then_refresh(&mut s, &k);
    out.push(s.done("within the memory budget dedup is exact", |r| {
        assert_eq!(r.stats.dedup_evictions, 0);
        assert_eq!(r.total().views, 2_000);
    }));

    s.send(0, &[k.ev("q1", "s1", "v1", "play", 0)])
        .flush(1_000)
        .flush(2_000)
        .send(2_500, &[k.ev("q2", "s2", "v2", "play", 2_500)])
        .flush(3_000);
    out.push(
        s.done("frames are numbered without gaps and carry their interval", |r| {
            let k = Kit::default();
            let frames: Vec<_> = r.frames.iter().map(|f| decode(f)).collect();
            let seqs: Vec<u64> = frames.iter().map(|f| f.header.id.seq).collect();
            // the idle interval's frame is empty and unnumbered (hosts drop it)
            assert_eq!(seqs, vec![1, 0, 2]);
            assert_eq!(frames[1].header.interval_start_ms, k.t0 + 1_000);
            assert_eq!(frames[1].header.interval_end_ms, k.t0 + 2_000);
            assert!(frames[1].is_empty());
            assert_eq!(frames[2].header.interval_start_ms, k.t0 + 2_000);
            assert_eq!(
                (frames[0].header.id.edge_id.as_str(), frames[0].header.pop_id.as_str()),
                ("fra-1", "fra")
            );
            assert_eq!(frames[2].intake.accepted, 1);
        }),
    );

    out
}
