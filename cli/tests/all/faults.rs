//! The fault suite: real `tally merger` and `tally edge` processes under traffic whose
//! ground truth is known, with faults injected in bounded loops: kill -9 of agents and
//! the merger at random instants, a lossy, duplicating, reordering and partitioned
//! network between edge and merger (a UDP proxy the test controls), a full disk under the
//! merger (a small tmpfs the test mounts), and an edge whose spool directory is deleted.
//! After each: no accepted view, like, share or comment lost, none counted twice, every
//! process recovers on its own; the figures are printed.

use crate::common::{Agent, KEY, Merger, loop_until, now_ms, send_all};
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tally_traffic::{Plan, Traffic};

fn plan(pops: usize, seed: u64) -> Plan {
    Plan {
        pops,
        new_sessions_per_s: 60.0,
        session_ms: (1_500, 4_000),
        beacon_every_ms: 400,
        live_streams: 1,
        live_share: 0.1,
        retry_rate: 0.03,
        duplicate_rate: 0.05,
        refresh_rate: 0.1,
        late_rate: 0.05,
        pop_switch_rate: if pops > 1 { 0.1 } else { 0.0 },
        cross_pop_retry_rate: if pops > 1 { 0.03 } else { 0.0 },
        // players keep trying while an agent is down, as a phone would
        max_tries: 60,
        key: KEY.as_bytes().to_vec(),
        seed,
        ..Plan::default()
    }
}

/// Drives the players for `ms` against `urls`.
async fn drive(t: &mut Traffic, http: &reqwest::Client, urls: &[String], ms: u64) {
    let end = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < end {
        let beacons = t.tick(now_ms());
        send_all(t, http, urls, beacons).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every player leaves, and every failed beacon is retried until it is taken.
async fn finish(t: &mut Traffic, http: &reqwest::Client, urls: &[String]) {
    let beacons = t.close_all(now_ms());
    send_all(t, http, urls, beacons).await;
    let end = Instant::now() + Duration::from_secs(60);
    while t.retries_pending() > 0 && Instant::now() < end {
        let beacons = t.tick(now_ms());
        send_all(t, http, urls, beacons).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(t.retries_pending(), 0, "every beacon was eventually taken");
}

/// What the merger counted, over all videos.
async fn counted(m: &Merger) -> (u64, i64, u64, u64) {
    (
        m.metric("tally_views_total").await as u64,
        m.metric("tally_likes_total").await as i64,
        m.metric("tally_shares_total").await as u64,
        m.metric("tally_comments_total").await as u64,
    )
}

/// Waits until the merger's counts equal the players' truth (or 60 s), then checks.
async fn converge(m: &Merger, t: &Traffic, what: &str) {
    converge_plus(m, t, what, 0).await
}

/// [`converge`] with `extra_views` accepted besides the players' beacons.
async fn converge_plus(m: &Merger, t: &Traffic, what: &str, extra_views: u64) {
    let truth = t.truth();
    let (shares, comments) = truth.shares_comments();
    let want = (truth.total_views() + extra_views, truth.total_likes(), shares, comments);
    let got = loop_until(Duration::from_secs(60), || async {
        let c = counted(m).await;
        (c == want).then_some(c)
    })
    .await;
    let last = counted(m).await;
    eprintln!(
        "{what}: players' beacons {} ({} events) accepted; views {} / likes {} / shares {} / comments {} in truth; merger counted {:?}",
        truth.beacons, truth.events, want.0, want.1, want.2, want.3, last
    );
    assert_eq!(
        got,
        Some(want),
        "{what}: (views, likes, shares, comments) counted vs truth"
    );
}

fn merger_args(quic: &str, http: &str) -> Vec<String> {
    ["--quic-listen", quic, "--http-listen", http]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn restart_merger(dir: &Path, quic: SocketAddr, http: SocketAddr) -> Merger {
    let args = merger_args(&quic.to_string(), &http.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Merger::start_with(dir, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_agents_and_the_merger_at_random_instants_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mdir = dir.path().join("merger");
    let mut m = Merger::start(&mdir);
    let pops = ["fra", "ams"];
    let spools: Vec<PathBuf> = pops.iter().map(|p| dir.path().join(p)).collect();
    let mut agents: Vec<Agent> = pops
        .iter()
        .zip(&spools)
        .map(|(p, s)| Agent::start((m.quic, &m.fingerprint), p, s, &[]))
        .collect();
    let mut urls: Vec<String> = agents.iter().map(|a| a.url("/v1/events")).collect();
    let http = reqwest::Client::new();
    let mut t = Traffic::new(plan(2, 31), now_ms());
    let mut rng = rand::rngs::SmallRng::seed_from_u64(now_ms());
    let mut kills = Vec::new();
    for round in 0..4 {
        drive(&mut t, &http, &urls, rng.random_range(300..1_500)).await;
        match rng.random_range(0..3) {
            victim @ (0 | 1) => {
                agents[victim].kill();
                agents[victim] = Agent::start((m.quic, &m.fingerprint), pops[victim], &spools[victim], &[]);
                urls[victim] = agents[victim].url("/v1/events");
                kills.push(format!("round {round}: agent {}", pops[victim]));
            }
            _ => {
                let (quic, http_addr) = (m.quic, m.http);
                m.kill();
                // down for longer than a spool interval: the agents keep spooling
                drive(&mut t, &http, &urls, 1_200).await;
                m = restart_merger(&mdir, quic, http_addr);
                kills.push(format!("round {round}: merger"));
            }
        }
    }
    drive(&mut t, &http, &urls, 1_000).await;
    finish(&mut t, &http, &urls).await;
    eprintln!("kill -9 at random instants: {}", kills.join(", "));
    converge(&m, &t, "kill -9 loop").await;
}

/// A UDP proxy between an edge and the merger that drops, duplicates, delays and
/// reorders datagrams, and can cut the link entirely.
struct Proxy {
    addr: SocketAddr,
    /// Percent of datagrams dropped (100: partitioned).
    drop_pct: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        back.connect(upstream).await.unwrap();
        let addr = front.local_addr().unwrap();
        let drop_pct = Arc::new(AtomicU32::new(0));
        let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
        let (f, b, d, c) = (front.clone(), back.clone(), drop_pct.clone(), client.clone());
        let up = tokio::spawn(async move {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = f.recv_from(&mut buf).await {
                *c.lock().unwrap() = Some(from);
                forward(&mut rng, &d, &buf[..n], |p| {
                    let b = b.clone();
                    async move {
                        let _ = b.send(&p).await;
                    }
                })
                .await;
            }
        });
        let (f, b, d) = (front, back, drop_pct.clone());
        let down = tokio::spawn(async move {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(2);
            let mut buf = vec![0u8; 65_536];
            while let Ok(n) = b.recv(&mut buf).await {
                let Some(to) = *client.lock().unwrap() else { continue };
                forward(&mut rng, &d, &buf[..n], |p| {
                    let f = f.clone();
                    async move {
                        let _ = f.send_to(&p, to).await;
                    }
                })
                .await;
            }
        });
        let task = tokio::spawn(async move {
            let _ = tokio::join!(up, down);
        });
        Proxy { addr, drop_pct, task }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `p` on, or not: dropped with the configured odds, duplicated (5%), delayed by
/// up to 30 ms (10%, which reorders it behind later datagrams).
async fn forward<F, Fut>(rng: &mut rand::rngs::SmallRng, drop_pct: &AtomicU32, p: &[u8], send: F)
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if rng.random_range(0..100) < drop_pct.load(Ordering::Relaxed) {
        return;
    }
    let copies = if rng.random_range(0..100) < 5 { 2 } else { 1 };
    for _ in 0..copies {
        let fut = send(p.to_vec());
        if rng.random_range(0..100) < 10 {
            let delay = Duration::from_millis(rng.random_range(1..30));
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                fut.await;
            });
        } else {
            fut.await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_reordering_then_partitioned_link_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(&dir.path().join("merger"));
    let proxy = Proxy::start(m.quic).await;
    proxy.drop_pct.store(10, Ordering::Relaxed);
    let fra = Agent::start((proxy.addr, &m.fingerprint), "fra", &dir.path().join("fra"), &[]);
    let sin = Agent::start((m.quic, &m.fingerprint), "sin", &dir.path().join("sin"), &[]);
    let urls = vec![fra.url("/v1/events"), sin.url("/v1/events")];
    let http = reqwest::Client::new();
    let mut t = Traffic::new(plan(2, 41), now_ms());
    drive(&mut t, &http, &urls, 2_000).await;
    // partition fra from the merger for longer than its keep-alive notices
    proxy.drop_pct.store(100, Ordering::Relaxed);
    drive(&mut t, &http, &urls, 6_000).await;
    let backlog = fra.metric("tally_edge_merger_backlog").await;
    eprintln!("partition: fra holds {backlog} frames for the merger");
    assert!(backlog > 0.0, "frames wait in fra's spool during the partition");
    proxy.drop_pct.store(10, Ordering::Relaxed);
    drive(&mut t, &http, &urls, 1_000).await;
    finish(&mut t, &http, &urls).await;
    converge(&m, &t, "lossy, duplicating, reordering link with a 6 s partition").await;
}

/// A small tmpfs the test mounts, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .ok()?
            .success();
        ok.then(|| Tmpfs(path.to_owned()))
    }

    /// Mounts one or fails the test, saying why.
    fn must_mount(path: &Path, size: &str) -> Tmpfs {
        Tmpfs::mount(path, size).unwrap_or_else(|| {
            panic!(
                "mounting a {size} tmpfs at {}: this test must run as root (CI does)",
                path.display()
            )
        })
    }

    /// Fills the file system but for about `leave` bytes; returns the filler's path.
    fn fill(&self, leave: u64) -> PathBuf {
        // a new file each call, so a second call tops up what the first left
        let n = std::fs::read_dir(&self.0).map_or(0, |d| d.count());
        let filler = self.0.join(format!("filler-{n}"));
        let free = bytes_free(&self.0);
        let f = std::fs::File::create(&filler).unwrap();
        use std::io::Write;
        let mut w = std::io::BufWriter::new(f);
        let chunk = vec![7u8; 64 << 10];
        let mut written = 0;
        while written + leave < free {
            let n = (free - leave - written).min(chunk.len() as u64) as usize;
            if w.write_all(&chunk[..n]).is_err() {
                break;
            }
            written += n as u64;
        }
        let _ = w.flush();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_merger_then_space_back_then_kill_9_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::must_mount(&dir.path().join("small"), "96m");
    let mdir = fs.0.join("merger");
    let mut m = Merger::start(&mdir);
    let fra = Agent::start((m.quic, &m.fingerprint), "fra", &dir.path().join("fra"), &[]);
    let urls = vec![fra.url("/v1/events")];
    let http = reqwest::Client::new();
    let mut t = Traffic::new(plan(1, 51), now_ms());
    drive(&mut t, &http, &urls, 1_500).await;
    // the disk fills up under the merger: appends fail, nothing is acknowledged
    let filler = fs.fill(4 << 10);
    drive(&mut t, &http, &urls, 3_000).await;
    let failures = m.metric("tally_log_write_failures_total").await;
    let held = fra.metric("tally_edge_merger_backlog").await;
    eprintln!("disk full: {failures} failed log commits; fra holds {held} frames");
    assert!(failures > 0.0, "the full disk made log writes fail");
    std::fs::remove_file(&filler).unwrap();
    drive(&mut t, &http, &urls, 1_500).await;
    finish(&mut t, &http, &urls).await;
    converge(&m, &t, "after the disk had room again").await;
    // the case: the merger killed and restarted must show the same counts
    let (quic, http_addr) = (m.quic, m.http);
    m.kill();
    let m = restart_merger(&mdir, quic, http_addr);
    converge(&m, &t, "after kill -9 and restart").await;
    drop(m);
    drop(fra);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_whose_spool_directory_is_deleted_keeps_counting() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(&dir.path().join("merger"));
    let spool = dir.path().join("fra");
    let mut fra = Agent::start((m.quic, &m.fingerprint), "fra", &spool, &[]);
    let http = reqwest::Client::new();
    let mut t = Traffic::new(plan(1, 61), now_ms());
    drive(&mut t, &http, &[fra.url("/v1/events")], 1_500).await;
    finish(&mut t, &http, &[fra.url("/v1/events")]).await;
    converge(&m, &t, "before the spool is lost").await;
    // the host is replaced: no spool, no epoch counter, no write-ahead log
    fra.kill();
    std::fs::remove_dir_all(&spool).unwrap();
    let fra = Agent::start((m.quic, &m.fingerprint), "fra", &spool, &[]);
    let mut later = Traffic::new(plan(1, 62), now_ms());
    drive(&mut later, &http, &[fra.url("/v1/events")], 1_500).await;
    finish(&mut later, &http, &[fra.url("/v1/events")]).await;
    let dups = m.metric("tally_frames_total{outcome=\"duplicate\"}").await;
    let truth = (t.truth().total_views(), later.truth().total_views());
    let want = truth.0 + truth.1;
    let got = loop_until(Duration::from_secs(30), || async {
        let v = m.metric("tally_views_total").await as u64;
        (v == want).then_some(v)
    })
    .await;
    eprintln!(
        "spool deleted: {} + {} views in truth, merger {:?}; frames taken for duplicates: {dups}",
        truth.0, truth.1, got
    );
    assert_eq!(
        got,
        Some(want),
        "the new incarnation's frames are not mistaken for old ones"
    );
}

/// Free bytes of the file system holding `path`.
fn bytes_free(path: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse::<u64>().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_tiers_only_keeps_acknowledging_and_history_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    // the tiers and checkpoints on a small file system, the frame log on a roomy one
    let small = Tmpfs::must_mount(&dir.path().join("small"), "64m");
    let mdir = small.0.join("merger");
    let _log = Tmpfs::must_mount(&mdir.join("log"), "256m");
    let args = ["--publish-interval", "300ms", "--rollup-interval", "300ms"];
    let m = Merger::start_with(&mdir, &args);
    let fra = Agent::start((m.quic, &m.fingerprint), "fra", &dir.path().join("fra"), &[]);
    let urls = vec![fra.url("/v1/events")];
    let http = reqwest::Client::new();
    let mut t = Traffic::new(plan(1, 71), now_ms());
    drive(&mut t, &http, &urls, 1_000).await;
    let filler = small.fill(16 << 10);
    assert!(bytes_free(&mdir.join("log")) > 100 << 20, "the log has room");
    drive(&mut t, &http, &urls, 3_000).await;
    finish(&mut t, &http, &urls).await;
    // frames were still acknowledged and counted live while the tiers could not write
    converge(&m, &t, "tiers' disk full, log fine").await;
    let tier_errors = m.metric("tally_tier_errors_total").await;
    eprintln!("tiers' disk full: {tier_errors} tier write failures");
    assert!(tier_errors > 0.0, "the full disk made tier writes fail");
    std::fs::remove_file(&filler).unwrap();
    // history catches up on its own: the catalog sums to the truth
    let want = t.truth().total_views();
    let sql = "select sum(views)::BIGINT from views";
    let got = loop_until(Duration::from_secs(90), || async {
        let rows = tally_merger::tiers::query_catalog(&mdir, sql).ok()?.1;
        let v = rows.first()?.first()?.parse::<u64>().ok()?;
        (v == want).then_some(v)
    })
    .await;
    eprintln!("tiers after space came back: catalog views {got:?}, truth {want}");
    assert_eq!(got, Some(want), "every acknowledged view reached history once");
    drop(fra);
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_an_agents_spool_refuses_beacons_loudly_and_loses_none_it_took() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(&dir.path().join("merger"));
    let fs = Tmpfs::must_mount(&dir.path().join("spool"), "48m");
    let fra = Agent::start((m.quic, &m.fingerprint), "fra", &fs.0.join("fra"), &[]);
    let urls = vec![fra.url("/v1/events")];
    let http = reqwest::Client::new();
    let mut t = Traffic::new(plan(1, 81), now_ms());
    drive(&mut t, &http, &urls, 1_000).await;
    let mut fillers = vec![fs.fill(0)];
    // beacons now fail to reach the write-ahead log: refused, never answered 202 (each
    // try a new session, so neither dedup nor the session limit answers instead)
    let (mut refused, mut taken) = (None, 0u64);
    for n in 0..500 {
        if n % 25 == 24 {
            // the agent frees what it spooled and deleted meanwhile: fill that too
            fillers.push(fs.fill(0));
        }
        let ev = crate::common::event(&format!("full-{n}"), &format!("full-{n}"), "v-full", "play");
        let status = http
            .post(fra.url("/v1/events"))
            .json(&serde_json::json!({ "events": [ev] }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        match status {
            202 => taken += 1,
            s if s >= 500 => {
                refused = Some(s);
                break;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("spool disk full: a beacon was answered {refused:?}");
    assert!(refused.is_some(), "a beacon the agent cannot make durable is refused");
    drive(&mut t, &http, &urls, 1_500).await;
    for f in &fillers {
        std::fs::remove_file(f).unwrap();
    }
    drive(&mut t, &http, &urls, 1_000).await;
    finish(&mut t, &http, &urls).await;
    // the probes answered 202 count, the one answered 503 does not
    converge_plus(&m, &t, "after the spool's disk had room again", taken).await;
    assert_eq!(m.views("v-full").await, taken, "only the probes answered 202 count");
    drop(fra);
}

/// Appends bytes to the newest file with `suffix` in `dir` (a write torn by a crash).
fn tear_newest(dir: &Path, suffix: &str, bytes: &[u8]) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with(suffix)))
        .collect();
    files.sort();
    let f = files.pop()?;
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .ok()?
        .write_all(bytes)
        .ok()?;
    Some(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_and_corrupted_files_after_kill_9_lose_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mdir = dir.path().join("merger");
    let config = dir.path().join("merger.toml");
    std::fs::write(&config, "checkpoint_interval_ms = 300\n").unwrap();
    let margs = ["--config", config.to_str().unwrap()];
    let mut m = Merger::start_with(&mdir, &margs);
    let spool = dir.path().join("fra");
    let mut fra = Agent::start((m.quic, &m.fingerprint), "fra", &spool, &[]);
    let http = reqwest::Client::new();
    let mut t = Traffic::new(plan(1, 91), now_ms());
    drive(&mut t, &http, &[fra.url("/v1/events")], 2_000).await;
    loop_until(Duration::from_secs(10), || async {
        (m.metric("tally_checkpoints_total").await >= 1.0).then_some(())
    })
    .await
    .expect("a checkpoint");
    // both killed mid-traffic; then every file they write gets a torn tail, and the
    // newest checkpoint is corrupted
    fra.kill();
    m.kill();
    let garbage = [0x55u8, 0, 0, 0, 1, 2, 3];
    let torn = [
        tear_newest(&mdir.join("log"), ".seg", &garbage),
        tear_newest(&spool, ".spool", &garbage),
        tear_newest(&spool.join("wal"), ".wal", &garbage),
    ];
    eprintln!("torn: {torn:?}");
    assert!(torn[0].is_some(), "the merger has a log segment");
    let ckpt = tear_newest(&mdir.join("checkpoint"), ".ckpt", b"").expect("a checkpoint file");
    let mut bytes = std::fs::read(&ckpt).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x5a;
    std::fs::write(&ckpt, &bytes).unwrap();
    let m = Merger::start_with(&mdir, &margs);
    assert_eq!(m.metric("tally_checkpoints_damaged").await, 1.0);
    let fra = Agent::start((m.quic, &m.fingerprint), "fra", &spool, &[]);
    let urls = vec![fra.url("/v1/events")];
    drive(&mut t, &http, &urls, 1_000).await;
    finish(&mut t, &http, &urls).await;
    converge(&m, &t, "after torn files and a corrupted checkpoint").await;
}
