//! Cluster mode's frame log against a real three-node NATS JetStream cluster
//! (`nats-server` 2.15.1 from PyPI, installed by `scripts/cluster-deps`; R3, fsync on
//! every write): frames cut by partition and published through it count exactly once,
//! through a kill -9 of the stream's leader and a resend of every frame; partition
//! leases balance across nodes, move when a node stops renewing, and fence a node that
//! was frozen past its lease.

use crate::common::{Agent, Merger, event_signed, loop_until, token};
use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tally_collector::Collector;
use tally_conformance::{Kit, body};
use tally_delta::{DeltaFrame, MergedDeltas};
use tally_merger::cluster::lease::{Lease, Leases};
use tally_merger::cluster::log::{FrameLog, LogConfig};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The directory with `nats-server`, installed (idempotently) by `scripts/cluster-deps`.
fn nats_bin() -> PathBuf {
    let out = Command::new(repo().join("scripts/cluster-deps"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/cluster-deps runs");
    assert!(out.status.success(), "scripts/cluster-deps failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Three `nats-server` processes forming one JetStream cluster on loopback.
struct Nats {
    bin: PathBuf,
    dir: PathBuf,
    client: Vec<u16>,
    route: Vec<u16>,
    procs: Vec<Option<Child>>,
}

impl Nats {
    fn start(dir: &Path, n: usize) -> Nats {
        let mut nats = Nats {
            bin: nats_bin().join("nats-server"),
            dir: dir.to_owned(),
            client: (0..n).map(|_| free_port()).collect(),
            route: (0..n).map(|_| free_port()).collect(),
            procs: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            nats.spawn(i);
        }
        nats
    }

    fn name(i: usize) -> String {
        format!("n{}", i + 1)
    }

    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = (0..self.route.len())
            .filter(|&j| j != i)
            .map(|j| format!("nats-route://127.0.0.1:{}", self.route[j]))
            .collect();
        let conf = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{client}\njetstream {{\n  store_dir: \"{store}\"\n  sync_interval: always\n}}\ncluster {{\n  name: tally\n  listen: 127.0.0.1:{route}\n  routes: [{routes}]\n}}\n",
            name = Self::name(i),
            client = self.client[i],
            store = self.dir.join(Self::name(i)).display(),
            route = self.route[i],
            routes = routes.join(", "),
        );
        let path = self.dir.join(format!("{}.conf", Self::name(i)));
        std::fs::write(&path, conf).unwrap();
        let log = std::fs::File::create(self.dir.join(format!("{}.log", Self::name(i)))).unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        self.procs[i] = Some(child);
    }

    fn urls(&self) -> Vec<String> {
        self.client.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect()
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }
}

/// The stream's leader (a server name), asked of the cluster.
async fn leader(urls: &[String], stream: &str) -> Option<String> {
    let client = async_nats::connect(urls).await.ok()?;
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(stream).await.ok()?;
    s.info().await.ok()?.cluster.as_ref()?.leader.clone()
}

/// Frames of `sessions` sessions over `videos` videos, one play each, flushed every
/// `per_frame` sessions; and the views each video should have.
fn traffic(
    sessions: usize,
    videos: usize,
    per_frame: usize,
) -> (Vec<DeltaFrame>, std::collections::BTreeMap<String, u64>) {
    let kit = Kit::default();
    let mut c = Collector::new(kit.config()).unwrap();
    let mut frames = Vec::new();
    let mut truth = std::collections::BTreeMap::new();
    for s in 0..sessions {
        let video = format!("v{}", s % videos);
        *truth.entry(video.clone()).or_insert(0) += 1;
        let ev = kit.ev(&format!("e{s}"), &format!("s{s}"), &video, "play", s as u64 * 10);
        let out = c.ingest(&body(&[ev]), &kit.facts(s as u64 * 10)).unwrap();
        assert_eq!(out.accepted, 1);
        if (s + 1) % per_frame == 0 {
            frames.push(c.flush(kit.t0 + s as u64 * 10 + 1));
        }
    }
    frames.push(c.flush(kit.t0 + sessions as u64 * 10 + 1));
    frames.retain(|f| !f.is_empty());
    (frames, truth)
}

/// Opens the log on a fresh three-node cluster (waiting for it to form).
async fn open_log(nats: &Nats, partitions: u32) -> FrameLog {
    let mut cfg = LogConfig::new(nats.urls());
    cfg.partitions = partitions;
    loop_until(Duration::from_secs(30), || {
        let cfg = cfg.clone();
        async move {
            FrameLog::open(cfg)
                .await
                .inspect_err(|e| eprintln!("cluster not ready yet: {e}"))
                .ok()
        }
    })
    .await
    .expect("a JetStream cluster of three forms and takes the stream")
}

type Held = std::collections::BTreeMap<u32, Lease>;

/// `tally merger --cluster` node `m<i>` on `nats`, 16 partitions, 2 s leases.
fn cluster_merger(dir: &Path, nats: &Nats, i: usize) -> Merger {
    let (id, urls) = (format!("m{i}"), nats.urls().join(","));
    Merger::start_with(
        &dir.join(&id),
        &[
            "--cluster",
            &urls,
            "--node-id",
            &id,
            "--partitions",
            "16",
            "--lease",
            "2s",
        ],
    )
}

/// Kills (-9) the NATS node leading `stream`; returns its name and index.
async fn kill_leader(nats: &mut Nats, stream: &str) -> (String, usize) {
    let lead = leader(&nats.urls(), stream).await.expect("the stream has a leader");
    let i = (0..3).find(|&i| Nats::name(i) == lead).expect("a known node");
    nats.kill(i);
    (lead, i)
}

/// Balancing rounds of every node until each holds its share and every partition is held.
async fn settle(nodes: &[&Leases], held: &mut [Held], partitions: u32) -> Vec<usize> {
    for _ in 0..40 {
        for (n, h) in nodes.iter().zip(held.iter_mut()) {
            n.announce("addr").await.unwrap();
            n.balance(h).await.unwrap();
        }
        let counts: Vec<usize> = held.iter().map(|h| h.len()).collect();
        let share = (partitions as usize).div_ceil(nodes.len());
        if counts.iter().sum::<usize>() == partitions as usize && counts.iter().all(|&c| c <= share) {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    held.iter().map(|h| h.len()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_balance_across_nodes_move_when_a_node_stops_and_fence_a_frozen_owner() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), 3);
    let p = 16;
    let log = open_log(&nats, p).await;
    let ttl = Duration::from_secs(2);
    let js = log.context();
    let open = |node: &'static str| Leases::open(js, log.stream_name(), node, p, ttl, 3);
    let (a, b, c) = (
        open("a").await.unwrap(),
        open("b").await.unwrap(),
        open("c").await.unwrap(),
    );

    // two nodes share the partitions
    let mut held = vec![Held::new(), Held::new()];
    let counts = settle(&[&a, &b], &mut held, p).await;
    assert_eq!(counts, vec![8, 8], "two nodes split 16 partitions");
    let holders = a.holders().await.unwrap();
    assert_eq!(holders.len(), 16);
    for (part, node) in &holders {
        let mine = if node == "a" { &held[0] } else { &held[1] };
        assert!(mine.contains_key(part), "p{part} held by {node} as the bucket says");
    }

    // a third joins: every node ends with at most its share, all held, none twice
    held.push(Held::new());
    let counts = settle(&[&a, &b, &c], &mut held, p).await;
    println!("after c joined: {counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), 16);
    assert!(counts.iter().all(|&n| n <= 6) && counts[2] > 0, "{counts:?}");
    let all: BTreeSet<u32> = held.iter().flat_map(|h| h.keys().copied()).collect();
    assert_eq!(all.len(), 16, "no partition held twice");

    // c stops renewing (frozen or dead): its leases age out and a and b take them
    let frozen = held.pop().unwrap();
    let t = Instant::now();
    let mut two = held;
    let counts = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (n, h) in [&a, &b].iter().zip(two.iter_mut()) {
            n.announce("addr").await.unwrap();
            n.balance(h).await.unwrap();
        }
        let counts: Vec<usize> = two.iter().map(|h| h.len()).collect();
        if counts.iter().sum::<usize>() == 16 || t.elapsed() > Duration::from_secs(20) {
            break counts;
        }
    };
    println!(
        "c's {} partitions moved to a and b in {:.1} s: {counts:?}",
        frozen.len(),
        t.elapsed().as_secs_f64()
    );
    assert_eq!(counts.iter().sum::<usize>(), 16, "c's partitions were taken over");
    // c wakes up: every renewal is refused, so it knows to stop acting for them
    for lease in frozen.values() {
        assert_eq!(
            c.renew(*lease).await.unwrap(),
            None,
            "a frozen owner's stale token is refused"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_through_a_three_node_jetstream_count_once_through_a_leader_kill_and_resends() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(dir.path(), 3);
    let started = Instant::now();
    let log = open_log(&nats, 8).await;
    println!(
        "three NATS nodes and an R3 stream ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let (frames, truth) = traffic(600, 37, 40);
    let half = frames.len() / 2;
    let mut stored = 0;
    for f in &frames[..half] {
        stored += log.publish(f).await.expect("published").stored;
    }
    // kill -9 the stream's leader while frames flow; the rest go through the others
    let (lead, i) = kill_leader(&mut nats, log.stream_name()).await;
    let mut acked = half;
    for f in &frames[half..] {
        // a publish in flight when the leader went may fail: the edge resends it
        let r = loop_until(Duration::from_secs(30), || async { log.publish(f).await.ok() }).await;
        stored += r.expect("published after the leader's death").stored;
        acked += 1;
    }
    let new_lead = leader(&nats.urls(), log.stream_name()).await;
    // every frame resent (an edge that did not hear the answers): all duplicates
    let mut dup = 0;
    for f in &frames {
        let r = loop_until(Duration::from_secs(30), || async { log.publish(f).await.ok() }).await;
        let r = r.expect("resent");
        assert_eq!(r.stored, 0, "a resent part is not stored again");
        dup += r.duplicates;
    }
    assert_eq!(dup, stored, "every part of every resent frame was recognised");
    // the killed node comes back and catches up
    nats.spawn(i);

    // read every partition from the start and apply it, as a partition's owner would
    let last = log.last_sequence().await.unwrap();
    let mut counted = std::collections::BTreeMap::new();
    for p in 0..log.partitions() {
        let mut reader = log.read(p, 1).await.unwrap();
        let mut state = MergedDeltas::default();
        let mut parts = 0;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(1), reader.next()).await;
            let Ok(Some(Ok((seq, frame)))) = next else { break };
            state.apply(&frame).unwrap();
            for r in &frame.counters {
                assert_eq!(tally_delta::partition_of(frame.str(r.video), log.partitions()), p);
            }
            parts += 1;
            if seq == last {
                break;
            }
        }
        assert!(parts > 0, "partition {p} has parts");
        for (video, c) in state.by_video() {
            assert!(counted.insert(video, c.views).is_none(), "a video in two partitions");
        }
    }
    let views: u64 = counted.values().sum();
    println!(
        "frames sent {} (+{} resent), acknowledged {acked}, parts stored {stored}, resent parts dropped {dup}; leader {lead} killed, then {new_lead:?}; views counted {views} of {}",
        frames.len(),
        frames.len(),
        truth.values().sum::<u64>()
    );
    assert_eq!(counted, truth, "views per video equal the truth");
}

/// Plays of `sessions` new sessions (numbered from `first`) of videos `c0`..`c29`,
/// alternating between `agents`; returns how many were acknowledged (`202`).
async fn plays(
    http: &reqwest::Client,
    agents: &[&Agent],
    first: usize,
    sessions: usize,
    truth: &mut BTreeMap<String, u64>,
) -> usize {
    let mut acked = 0;
    for s in first..first + sessions {
        let (video, session) = (format!("c{}", s % 30), format!("cs{s}"));
        let ev = event_signed(&format!("ce{s}"), &session, &video, "play", &token(&video, &session));
        let r = http
            .post(agents[s % agents.len()].url("/v1/events"))
            .header("x-forwarded-for", format!("198.51.{}.{}", s / 250, s % 250))
            .json(&serde_json::json!({ "events": [ev] }))
            .send()
            .await
            .expect("the edge answers");
        assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap_or_default());
        acked += 1;
        *truth.entry(video).or_insert(0) += 1;
    }
    acked
}

/// Views of every video in `truth` as `node` answers them (forwarding to owners);
/// `None` for a video it cannot answer now.
async fn views_at(node: &Merger, truth: &BTreeMap<String, u64>) -> BTreeMap<String, Option<u64>> {
    let mut out = BTreeMap::new();
    for video in truth.keys() {
        let (status, j) = node.get(&format!("/v1/videos/{video}/stats")).await;
        out.insert(video.clone(), (status == 200).then(|| j["views"].as_u64()).flatten());
    }
    out
}

/// Waits until every node in `nodes` answers the truth for every video; else says what
/// differed last.
async fn agree(nodes: &[&Merger], truth: &BTreeMap<String, u64>) -> Result<(), String> {
    let want: BTreeMap<String, Option<u64>> = truth.iter().map(|(k, v)| (k.clone(), Some(*v))).collect();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let mut off = None;
        for (i, n) in nodes.iter().enumerate() {
            let got = views_at(n, truth).await;
            if got != want {
                let diff: Vec<_> = got.iter().filter(|(k, v)| want.get(*k) != Some(v)).take(5).collect();
                off = Some(format!("node {i}: {diff:?}"));
                break;
            }
        }
        match off {
            None => return Ok(()),
            Some(o) if Instant::now() > deadline => return Err(o),
            Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_mergers_on_jetstream_count_exactly_through_a_frozen_merger_and_a_killed_one() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), 3);
    // the stream made before the mergers start (they would wait for the cluster too)
    let _log = open_log(&nats, 16).await;
    let node = |i: usize| cluster_merger(dir.path(), &nats, i);
    let (m1, m2, mut m3) = (node(1), node(2), node(3));
    let fra = Agent::start((m1.quic, &m1.fingerprint), "fra", &dir.path().join("fra"), &[]);
    let ams = Agent::start((m2.quic, &m2.fingerprint), "ams", &dir.path().join("ams"), &[]);
    let http = reqwest::Client::new();
    let mut truth = BTreeMap::new();

    let started = Instant::now();
    let mut acked = plays(&http, &[&fra, &ams], 0, 300, &mut truth).await;
    agree(&[&m1, &m2, &m3], &truth)
        .await
        .unwrap_or_else(|off| panic!("the nodes did not agree with the truth: {off}"));
    println!(
        "three mergers: {acked} plays acknowledged, every node answers the truth after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // a live viewer through one edge is seen watching from every node
    let now = crate::common::now_ms() / 1000;
    let live_token = tally_collector::token::mint(
        crate::common::KEY.as_bytes(),
        &tally_collector::Claims {
            video: "live-1".into(),
            channel: "ch1".into(),
            category: "music".into(),
            live: true,
            session: "lv1".into(),
            user: None,
            issued_s: now - 60,
            expires_s: now + 3_600,
        },
    );
    let ev = event_signed("lv1-play", "lv1", "live-1", "play", &live_token);
    let r = http
        .post(fra.url("/v1/events"))
        .json(&serde_json::json!({ "events": [ev] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    for (i, n) in [&m1, &m2, &m3].iter().enumerate() {
        let seen = loop_until(Duration::from_secs(20), || async {
            let (s, j) = n.get("/v1/live/live-1").await;
            (s == 200 && j["watching"] == 1).then_some(())
        })
        .await;
        assert!(
            seen.is_some(),
            "node {i} does not see the live viewer: {:?}",
            n.get("/v1/live/live-1").await
        );
    }

    // a block through one node takes effect on every node, and so does the unblock
    assert_eq!(m2.block("c5", true).await, 200);
    for (i, n) in [&m1, &m2, &m3].iter().enumerate() {
        let hidden = loop_until(Duration::from_secs(15), || async {
            let (s, j) = n.get("/v1/videos/c5/stats").await;
            (s == 200 && j["blocked"] == true && j.get("views").is_none()).then_some(())
        })
        .await;
        assert!(
            hidden.is_some(),
            "node {i} still shows the blocked video: {:?}",
            n.get("/v1/videos/c5/stats").await
        );
    }
    assert_eq!(m3.block("c5", false).await, 200);
    // the edges learn it from the nodes they are connected to: a play of c5 is refused
    // (`video is blocked`) until then, and then counts once
    for (k, agent) in [&fra, &ams].iter().enumerate() {
        let session = format!("probe-{k}");
        let ev = event_signed(
            &format!("{session}-play"),
            &session,
            "c5",
            "play",
            &token("c5", &session),
        );
        let took = loop_until(Duration::from_secs(15), || async {
            let r = http
                .post(agent.url("/v1/events"))
                .json(&serde_json::json!({ "events": [ev.clone()] }))
                .send()
                .await
                .ok()?;
            (r.status().as_u16() == 202).then_some(())
        })
        .await;
        assert!(took.is_some(), "edge {k} still refuses the unblocked video");
        *truth.get_mut("c5").unwrap() += 1;
        acked += 1;
    }
    agree(&[&m1, &m2, &m3], &truth)
        .await
        .unwrap_or_else(|off| panic!("after the unblock: {off}"));

    // freeze m3 past its leases (SIGSTOP); its partitions move and more plays arrive
    let signal = |sig: &str, pid: u32| {
        let ok = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP", m3.child.id());
    acked += plays(&http, &[&fra, &ams], 300, 150, &mut truth).await;
    let moved = agree(&[&m1, &m2], &truth).await;
    // woken, m3 must not answer a count from the partitions it lost: every answer it
    // gives is the truth (forwarded or its own), or a 503 while it finds out
    signal("-CONT", m3.child.id());
    let mut stale = Vec::new();
    let mut answered = 0;
    for _ in 0..8 {
        for (video, got) in views_at(&m3, &truth).await {
            match got {
                Some(v) if v != truth[&video] => stale.push((video, v)),
                Some(_) => answered += 1,
                None => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    moved.unwrap_or_else(|off| panic!("m3's partitions did not move while it was frozen: {off}"));
    println!("m3 frozen past its leases and resumed: {answered} answers, all the truth; stale: {stale:?}");
    assert!(
        stale.is_empty(),
        "a frozen-then-resumed node answered stale counts: {stale:?}"
    );
    agree(&[&m1, &m2, &m3], &truth)
        .await
        .unwrap_or_else(|off| panic!("m3 did not rejoin: {off}"));

    // kill -9 a merger that owns partitions; more plays meanwhile
    m3.kill();
    let killed = Instant::now();
    acked += plays(&http, &[&fra, &ams], 450, 150, &mut truth).await;
    agree(&[&m1, &m2], &truth)
        .await
        .unwrap_or_else(|off| panic!("after the kill the nodes did not agree with the truth: {off}"));
    let counted: u64 = views_at(&m1, &truth).await.values().flatten().sum();
    println!(
        "after kill -9 of m3: sent {} plays, acknowledged {acked}, counted {counted}; its partitions moved and caught up in {:.1} s",
        truth.values().sum::<u64>(),
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(counted, truth.values().sum::<u64>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mergers_count_exactly_through_a_jetstream_leader_kill_and_a_whole_nats_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(dir.path(), 3);
    let _log = open_log(&nats, 16).await;
    let node = |i: usize| cluster_merger(dir.path(), &nats, i);
    let (m1, m2) = (node(1), node(2));
    let fra = Agent::start((m1.quic, &m1.fingerprint), "fra", &dir.path().join("fra"), &[]);
    let ams = Agent::start((m2.quic, &m2.fingerprint), "ams", &dir.path().join("ams"), &[]);
    let http = reqwest::Client::new();
    let mut truth = BTreeMap::new();
    let mut acked = plays(&http, &[&fra, &ams], 0, 200, &mut truth).await;
    agree(&[&m1, &m2], &truth)
        .await
        .unwrap_or_else(|off| panic!("before the faults: {off}"));

    // kill -9 the frame stream's leader while plays flow
    let (lead, i) = kill_leader(&mut nats, "TALLY_FRAMES").await;
    acked += plays(&http, &[&fra, &ams], 200, 200, &mut truth).await;
    agree(&[&m1, &m2], &truth)
        .await
        .unwrap_or_else(|off| panic!("after the leader's kill: {off}"));
    nats.spawn(i);

    // the whole NATS cluster goes down: beacons are still taken (the edges spool their
    // frames until a merger acknowledges them) and nothing is lost when it is back
    for j in 0..3 {
        nats.kill(j);
    }
    acked += plays(&http, &[&fra, &ams], 400, 100, &mut truth).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for j in 0..3 {
        nats.spawn(j);
    }
    acked += plays(&http, &[&fra, &ams], 500, 100, &mut truth).await;
    agree(&[&m1, &m2], &truth)
        .await
        .unwrap_or_else(|off| panic!("after the whole NATS cluster restarted: {off}"));
    let counted: u64 = views_at(&m1, &truth).await.values().flatten().sum();
    println!(
        "leader {lead} killed, then all three NATS nodes restarted: sent {}, acknowledged {acked}, counted {counted}",
        truth.values().sum::<u64>()
    );
    assert_eq!(counted, truth.values().sum::<u64>());
}
