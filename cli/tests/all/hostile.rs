//! Hostile clients, replayed against real `tally merger`, `tally edge` and Spin
//! processes, each with the bound it must meet:
//!
//! - one playback token is worth one view, one like (its own identity's: an unlike
//!   naming a real user takes nothing away), at most `MAX_SHARES` shares and
//!   `MAX_COMMENTS` comments, and watch time no longer than the token has existed,
//!   wherever its beacons land (two agents and a fresh Spin instance per request);
//! - crafted bodies (a repeated key) are refused, and junk beacons cost the agent no
//!   write-ahead log and a bounded amount of memory;
//! - thousands of half-open connections and live-stream clients from other addresses
//!   leave frame ingest and beacons working, at a bounded cost in memory.

use crate::common::{Agent, KEY, Merger, SECRET, loop_until, now_ms, rss_kib};
use crate::spin::{https_merger, spin, url};
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// A token for `session` on `video`, issued at `issued_s`, for the signed-in `user` if any.
fn mint(video: &str, session: &str, user: Option<&str>, issued_s: u64) -> String {
    tally_collector::token::mint(
        KEY.as_bytes(),
        &tally_collector::Claims {
            video: video.into(),
            channel: "ch1".into(),
            category: "music".into(),
            live: false,
            session: session.into(),
            user: user.map(str::to_owned),
            issued_s,
            expires_s: issued_s + 3_600,
        },
    )
}

/// One event; `user_id` is what the client claims about itself.
fn ev(id: &str, session: &str, kind: &str, ts: u64, pos_s: f64, token: &str, user_id: Option<&str>) -> Value {
    let mut e = json!({
        "event_id": id, "session_id": session, "video_id": "v42", "type": kind,
        "ts": ts, "position_s": pos_s, "device": "desktop", "source": "direct", "token": token,
    });
    if let Some(u) = user_id {
        e["user_id"] = json!(u);
    }
    e
}

async fn post(http: &reqwest::Client, url: &str, body: String) -> (u16, Value) {
    let r = http
        .post(url)
        .header("content-type", "text/plain;charset=UTF-8")
        .body(body)
        .send()
        .await
        .expect("the edge answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_is_worth_one_view_its_own_like_and_capped_engagement_wherever_its_beacons_land() {
    let dir = tempfile::tempdir().unwrap();
    let m = https_merger(&dir.path().join("m"), &[]);
    let fra = Agent::start((m.quic, &m.fingerprint), "fra", &dir.path().join("fra"), &[]);
    let ams = Agent::start((m.quic, &m.fingerprint), "ams", &dir.path().join("ams"), &[]);
    let sin = spin(&m, "sin").await;
    let http = reqwest::Client::new();
    let now = now_ms();

    // a signed-in user likes the video
    let alice = mint("v42", "alice-s", Some("alice"), now / 1000 - 600);
    let (s, j) = post(
        &http,
        &fra.url("/v1/events"),
        json!([ev("al-1", "alice-s", "like", now, 0.0, &alice, None)]).to_string(),
    )
    .await;
    assert_eq!(s, 202, "{j}");

    // the attacker has one token, minted a minute ago, and sends to every edge it can
    // reach: plays claiming a minute of progress each at other positions, 40 likes, 40
    // unlikes (the first naming alice), 40 shares and 40 comments per edge
    let issued_s = now / 1000 - 60;
    let t = mint("v42", "atk-1", None, issued_s);
    let n = 40;
    let burst = |pop: &str, pos0: f64| {
        let mut e = vec![
            ev(&format!("{pop}-play"), "atk-1", "play", now - 50_000, pos0, &t, None),
            ev(&format!("{pop}-hb"), "atk-1", "heartbeat", now, pos0 + 62.0, &t, None),
        ];
        for i in 0..n {
            let claimed = if i == 0 { "alice".to_owned() } else { format!("u{i}") };
            e.push(ev(
                &format!("{pop}-l{i}"),
                "atk-1",
                "like",
                now,
                0.0,
                &t,
                Some(&claimed),
            ));
            e.push(ev(
                &format!("{pop}-u{i}"),
                "atk-1",
                "unlike",
                now - 1_000,
                0.0,
                &t,
                Some(&claimed),
            ));
            e.push(ev(&format!("{pop}-s{i}"), "atk-1", "share", now, 0.0, &t, None));
            e.push(ev(&format!("{pop}-c{i}"), "atk-1", "comment", now, 0.0, &t, None));
        }
        json!({ "events": e }).to_string()
    };
    for (target, pop, pos0) in [
        (fra.url("/v1/events"), "fra", 0.0),
        (ams.url("/v1/events"), "ams", 200.0),
        (url(&sin, "/v1/events"), "sin", 400.0),
    ] {
        let (s, j) = post(&http, &target, burst(pop, pos0)).await;
        assert_eq!((s, j["accepted"].as_u64()), (202, Some(2 + 4 * n)), "{pop}: {j}");
    }
    // a fresh Spin instance per request: the same token again, in requests of their own
    for r in 0..3 {
        let e: Vec<Value> = (0..10)
            .flat_map(|i| {
                [
                    ev(&format!("sin{r}-l{i}"), "atk-1", "like", now, 0.0, &t, Some("alice")),
                    ev(&format!("sin{r}-s{i}"), "atk-1", "share", now, 0.0, &t, None),
                ]
            })
            .collect();
        let (s, j) = post(&http, &url(&sin, "/v1/events"), json!(e).to_string()).await;
        assert_eq!(s, 202, "{j}");
    }

    // every share and comment over the cap reaches the merger and is refused there
    let (shares_sent, comments_sent) = (3 * n + 30, 3 * n);
    let cap = (u64::from(tally_delta::MAX_SHARES), u64::from(tally_delta::MAX_COMMENTS));
    let arrived = loop_until(Duration::from_secs(20), || async {
        let s = m.metric("tally_facts_over_cap_total{kind=\"share\"}").await as u64;
        let c = m.metric("tally_facts_over_cap_total{kind=\"comment\"}").await as u64;
        (s == shares_sent - cap.0 && c == comments_sent - cap.1).then_some(())
    })
    .await;
    assert!(arrived.is_some(), "every share and comment reached the merger");
    // the likes and watch time travel in the same frames; give the last ones a moment
    let stats = loop_until(Duration::from_secs(10), || async {
        let (_, j) = m.get("/v1/videos/v42/stats").await;
        (j["likes"] == 2 && j["watch_time_s"].as_u64().unwrap_or(0) >= 52).then_some(j)
    })
    .await;
    let stats = match stats {
        Some(j) => j,
        None => panic!("likes and watch time: {}", m.get("/v1/videos/v42/stats").await.1),
    };
    let age_s = now_ms() / 1000 - issued_s;
    println!("one token against three edges: {stats} (token {age_s} s old)");
    assert_eq!(stats["views"], 1, "one view for one token: {stats}");
    assert_eq!(stats["likes"], 2, "alice's like and the token's own: {stats}");
    assert_eq!(stats["shares"].as_u64(), Some(cap.0), "{stats}");
    assert_eq!(stats["comments"].as_u64(), Some(cap.1), "{stats}");
    let watched = stats["watch_time_s"].as_u64().unwrap_or(0);
    assert!(
        watched <= age_s + 2,
        "watch time {watched} s is more than the token's age {age_s} s: {stats}"
    );
    assert!(
        m.metric("tally_watch_refused_ms_total").await > 0.0,
        "the excess was refused"
    );
}

/// The soft limit on open files of this process.
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(1024)
}

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Asks for a live stream over TLS from `from`; the status and, when it is `200`, the
/// open stream.
async fn live_stream(
    tls: std::sync::Arc<rustls::ClientConfig>,
    from: IpAddr,
    to: SocketAddr,
) -> (u16, Option<TlsStream>) {
    use tokio::io::AsyncReadExt;
    let Ok(tcp) = connect_from(from, to).await else {
        return (0, None);
    };
    let name = rustls::pki_types::ServerName::try_from("tally-merger").unwrap();
    let Ok(mut s) = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await else {
        return (1, None);
    };
    if s.write_all(b"GET /v1/live/s1/events HTTP/1.1\r\nhost: tally-merger\r\n\r\n")
        .await
        .is_err()
    {
        return (2, None);
    }
    let mut head = [0u8; 12];
    match tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head)).await {
        Ok(Ok(_)) => {
            let status = std::str::from_utf8(&head[9..12])
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(3);
            (status, (status == 200).then_some(s))
        }
        _ => (4, None),
    }
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    s.connect(to).await
}

/// Opens up to `n` connections from `from` to `to` that send half a request's headers.
async fn half_open(from: IpAddr, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        match connect_from(from, to).await {
            Ok(mut c) => {
                let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ").await;
                out.push(c);
            }
            Err(_) => break,
        }
    }
    out
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_bodies_are_refused_and_junk_costs_no_log_and_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(&dir.path().join("m"));
    let spool = dir.path().join("fra");
    let fra = Agent::start((m.quic, &m.fingerprint), "fra", &spool, &[]);
    let http = reqwest::Client::new();
    let now = now_ms();
    let t = mint("v42", "p-1", None, now / 1000 - 60);
    let good = ev("p-1", "p-1", "play", now, 0.0, &t, None);

    // a repeated key is refused whole: the router and the counter cannot read two beacons
    for crafted in [
        format!(r#"{{"events":[{good}],"events":[],"pad":"\u0041"}}"#),
        format!(
            r#"{{"events":[{}]}}"#,
            good.to_string().replacen('{', r#"{"session_id":"other","#, 1)
        ),
    ] {
        let (s, j) = post(&http, &fra.url("/v1/events"), crafted.clone()).await;
        assert_eq!(s, 400, "{crafted}: {j}");
    }

    // junk: 1,500 beacons with 60 KB session ids and bad tokens
    let rss0 = rss_kib(&fra.child);
    let wal0 = dir_bytes(&spool.join("wal"));
    let long = "x".repeat(60_000);
    let started = Instant::now();
    let mut refused = 0;
    for round in 0..150 {
        let sends = (0..10).map(|i| {
            let body = json!([ev(
                &format!("j{round}-{i}"),
                &format!("{long}{round}-{i}"),
                "like",
                now,
                0.0,
                "junk.junk.junk",
                None
            )])
            .to_string();
            let (http, target) = (http.clone(), fra.url("/v1/events"));
            // from many addresses, so that the per-address limit lets most reach the gate
            let from = format!("203.0.{}.{i}", round % 250);
            async move {
                let r = http
                    .post(target)
                    .header("x-forwarded-for", from)
                    .body(body)
                    .send()
                    .await;
                r.map_or(0, |r| r.status().as_u16())
            }
        });
        for s in futures_util::future::join_all(sends).await {
            assert!((400..500).contains(&s), "junk is refused, got {s}");
            refused += u64::from(s == 400);
        }
    }
    let (rss1, wal1) = (rss_kib(&fra.child), dir_bytes(&spool.join("wal")));
    println!(
        "1,500 junk beacons (90 MB) in {:.1} s: agent RSS {} -> {} MiB (+{} MiB), write-ahead log +{} bytes, {refused} answered 400",
        started.elapsed().as_secs_f64(),
        rss0 / 1024,
        rss1 / 1024,
        rss1.saturating_sub(rss0) / 1024,
        wal1.saturating_sub(wal0)
    );
    assert!(refused > 0, "some junk got as far as the collector");
    assert!(
        wal1.saturating_sub(wal0) < 64 << 10,
        "junk reached the write-ahead log: {wal0} -> {wal1}"
    );
    assert!(fra.metric("tally_edge_beacons_unlogged_total").await >= refused as f64);
    assert!(
        rss1.saturating_sub(rss0) < 48 * 1024,
        "agent RSS grew {rss0} -> {rss1} KiB"
    );
    // and people (from another address than the junk's) still count
    let r = http
        .post(fra.url("/v1/events"))
        .header("x-forwarded-for", "198.51.100.7")
        .body(json!([good]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap_or_default());
    assert_eq!(crate::common::merger_views(&m, 1, Duration::from_secs(15)).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_half_open_connections_and_live_clients_leave_frames_and_beacons_working() {
    // 5,000 half-open connections to each of two listeners and 4,000 live clients need
    // about 14,000 descriptors here; scale down on a machine that allows fewer
    let scale = (open_files_limit().saturating_sub(1_000) as f64 / 14_000.0).min(1.0);
    let (half, live) = ((5_000.0 * scale) as usize, (4_000.0 * scale) as usize);
    let dir = tempfile::tempdir().unwrap();
    let m = https_merger(&dir.path().join("m"), &[]);
    let fra = Agent::start((m.quic, &m.fingerprint), "fra", &dir.path().join("fra"), &[]);
    let sin = spin(&m, "sin").await;
    let https = m.https.unwrap();
    let (attacker, streamer): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
    let rss0 = (rss_kib(&m.child), rss_kib(&fra.child));
    let started = Instant::now();
    let held_m = half_open(attacker, https, half).await;
    let held_a = half_open(attacker, fra.http, half).await;
    // live clients over TLS on the same listener as the frame posts
    let tls = tally_link::tls::https_client_config(&m.fingerprint).unwrap();
    let asks = (0..live).map(|_| live_stream(tls.clone(), streamer, https));
    let answers: Vec<(u16, Option<TlsStream>)> = futures_util::StreamExt::collect(
        futures_util::StreamExt::buffer_unordered(futures_util::stream::iter(asks), 200),
    )
    .await;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut streams = Vec::new();
    for (status, stream) in answers {
        *statuses.entry(status).or_default() += 1;
        streams.extend(stream);
    }
    println!(
        "held {} + {} half-open connections and asked for {live} live streams ({statuses:?}) in {:.1} s",
        held_m.len(),
        held_a.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        streams.len() <= tally_link::listener::STREAMS_PER_ADDRESS,
        "{statuses:?}"
    );

    // meanwhile from 127.0.0.1: beacons to the agent (frames over QUIC) and to the Spin
    // app (frames posted over HTTPS to the attacked listener) count
    let http = reqwest::Client::new();
    let now = now_ms();
    for (target, session) in [(fra.url("/v1/events"), "ok-1"), (url(&sin, "/v1/events"), "ok-2")] {
        let t = mint("v42", session, None, now / 1000 - 60);
        let (s, j) = post(
            &http,
            &target,
            json!([ev(session, session, "play", now, 0.0, &t, None)]).to_string(),
        )
        .await;
        assert_eq!(s, 202, "{target}: {j}");
    }
    let views = crate::common::merger_views(&m, 2, Duration::from_secs(20)).await;
    let rss1 = (rss_kib(&m.child), rss_kib(&fra.child));
    println!(
        "while held: {views} views counted; merger RSS {} -> {} MiB, agent RSS {} -> {} MiB",
        rss0.0 / 1024,
        rss1.0 / 1024,
        rss0.1 / 1024,
        rss1.1 / 1024
    );
    assert_eq!(views, 2, "beacons through the agent and the Spin app both counted");
    assert!(
        rss1.0.saturating_sub(rss0.0) < 160 * 1024,
        "merger RSS grew {rss0:?} -> {rss1:?} KiB"
    );
    assert!(
        rss1.1.saturating_sub(rss0.1) < 96 * 1024,
        "agent RSS grew {rss0:?} -> {rss1:?} KiB"
    );
    // a frame post over HTTPS with the right secret is answered while all this is held
    let c = tally_link::client::MergerClient::connect(m.quic, &m.fingerprint, "iad", SECRET)
        .await
        .expect("QUIC ingest takes a new edge");
    drop(c);
    drop((held_m, held_a, streams));
}
