//! `tally demo`: the whole pipeline on this machine. A merger and three edge agents on
//! loopback, and simulated players sending real HTTP beacons to the agents; a live view
//! of the counts; at the end the views, likes and live viewers Tally counted beside the
//! players' ground truth. The players do what real ones do: retry, duplicate, reload,
//! deliver late, switch POP mid-session and have beacons retried at another POP; and
//! one agent is restarted half-way.

use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_agent::config::{AgentConfig, MergerTarget};
use tally_spin_host::{AppConfig, RunningApp};
use tally_traffic::{Beacon, Outcome, Plan, Traffic, Viral};
use tokio::sync::{Semaphore, mpsc};

const POPS: [&str; 3] = ["fra", "iad", "sin"];
/// The fourth POP runs the Spin component (a fresh instance per beacon) in the Spin
/// harness, posting its frames to the merger's HTTPS ingest.
const SPIN_POP: &str = "spin";
const SPIN_MANIFEST: &str = include_str!("../../../spin.toml");
const TOKEN_KEY: &str = "tally-demo-signing-key-0001";

/// Flags of `tally demo`.
#[derive(clap::Args)]
pub(crate) struct DemoArgs {
    /// How long the traffic runs, e.g. `30s` or `2m`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Where the merger's files (frame log, DuckDB tiers, catalog) and the agents' spools go.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// New player sessions per second (before the viral spike).
    #[arg(long, default_value_t = 60.0)]
    sessions_per_s: f64,
    /// Run the collectors natively instead of as collector.wasm under wasmtime.
    #[arg(long)]
    native: bool,
    /// After the report, keep the merger and edges running (until Ctrl-C) so the
    /// dashboard can be browsed.
    #[arg(long)]
    stay: bool,
}

struct Stack {
    merger: tally_merger::Running,
    agents: Vec<tally_agent::Running>,
    agent_cfgs: Vec<AgentConfig>,
    spin: RunningApp,
}

/// Runs the demo.
pub(crate) fn run(a: DemoArgs) -> Result<()> {
    if a.duration < Duration::from_secs(5) || a.duration > Duration::from_secs(24 * 3600) {
        bail!("--duration must be between 5s and 24h");
    }
    if !(1.0..=5_000.0).contains(&a.sessions_per_s) {
        bail!("--sessions-per-s must be between 1 and 5000");
    }
    crate::init_logs("error");
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(demo(a))
}

async fn start_stack(a: &DemoArgs) -> Result<Stack> {
    std::fs::create_dir_all(&a.data_dir).with_context(|| format!("creating {}", a.data_dir.display()))?;
    let mut mcfg = tally_merger::MergerConfig {
        data_dir: a.data_dir.clone(),
        quic_listen: "127.0.0.1:0".parse()?,
        http_listen: "127.0.0.1:0".parse()?,
        https_listen: Some("127.0.0.1:0".parse()?),
        publish_interval_ms: 2_000,
        ..tally_merger::MergerConfig::default()
    };
    for pop in POPS.into_iter().chain([SPIN_POP]) {
        mcfg.edges.insert(pop.into(), format!("demo-secret-{pop}"));
    }
    let merger = tally_merger::start(mcfg).await.context("starting the merger")?;
    let mut agents = Vec::new();
    let mut agent_cfgs = Vec::new();
    for pop in POPS {
        let cfg = AgentConfig {
            pop_id: pop.into(),
            secret: format!("demo-secret-{pop}"),
            mergers: vec![MergerTarget {
                addr: merger.quic_addr,
                fingerprint: merger.fingerprint.clone(),
            }],
            listen: "127.0.0.1:0".parse()?,
            spool_dir: a.data_dir.join("edges").join(pop),
            workers: 2,
            native: a.native,
            token_key: TOKEN_KEY.into(),
            client_addr_header: Some("x-forwarded-for".into()),
            ..AgentConfig::default()
        };
        agents.push(
            tally_agent::start(cfg.clone())
                .await
                .with_context(|| format!("starting the {pop} edge agent"))?,
        );
        agent_cfgs.push(cfg);
    }
    let https = merger.https_addr.context("the merger's HTTPS ingest")?.to_string();
    let secret = format!("demo-secret-{SPIN_POP}");
    let vars = [
        ("merger_host", https.as_str()),
        ("edge_id", SPIN_POP),
        ("edge_secret", secret.as_str()),
        ("token_key", TOKEN_KEY),
        ("pop_id", SPIN_POP),
    ];
    let app = AppConfig::parse(SPIN_MANIFEST, "collector", &vars).context("reading spin.toml")?;
    let spin = tally_spin_host::serve(
        tally_wasm_artifacts::SPIN_COLLECTOR_WASM,
        app,
        Some(&merger.fingerprint),
    )
    .await
    .context("starting the Spin component")?;
    Ok(Stack {
        merger,
        agents,
        agent_cfgs,
        spin,
    })
}

struct View {
    started: Instant,
    duration: Duration,
    lines: usize,
    tty: bool,
    last_plain: Instant,
}

async fn demo(a: DemoArgs) -> Result<()> {
    let mut stack = start_stack(&a).await?;
    let merger_http = format!("http://{}", stack.merger.http_addr);
    // the demo reads /v1/top, and the dashboard reads analytics, with an API key of its own
    let (_, api_key) = tally_merger::keys::create(
        &tally_merger::keys::path_in(&a.data_dir),
        "demo",
        tally_merger::keys::Scope::Platform,
        tally_merger::keys::DEFAULT_PER_MIN,
    )?;
    let dashboard = format!("{merger_http}/#key={api_key}");
    let mut urls: Vec<String> = stack
        .agents
        .iter()
        .map(|r| format!("http://{}/v1/events", r.addr))
        .chain([format!("http://{}/v1/events", stack.spin.addr)])
        .collect();
    let views_before = stack.merger.ingest.read().total_views();
    let before = stack.merger.ingest.read().totals();
    eprintln!(
        "tally demo: merger on QUIC {} / HTTP {}; edge agents {} on {}; Spin component ({SPIN_POP}) on {}; traffic for {:?}",
        stack.merger.quic_addr,
        merger_http,
        POPS.join(", "),
        stack
            .agents
            .iter()
            .map(|r| r.addr.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        stack.spin.addr,
        a.duration
    );
    eprintln!("tally demo: the creator dashboard is at {dashboard}");
    let secs = a.duration.as_millis() as u64;
    let plan = Plan {
        new_sessions_per_s: a.sessions_per_s,
        pops: urls.len(),
        viral: Some(Viral {
            start_ms: secs * 3 / 10,
            end_ms: secs * 55 / 100,
            boost: 3.0,
            share: 0.6,
        }),
        key: TOKEN_KEY.as_bytes().to_vec(),
        seed: tally_agent::now_ms(),
        pop_switch_rate: 0.1,
        cross_pop_retry_rate: 0.02,
        // players keep retrying through the agent restart, as a phone would
        max_tries: 20,
        ..Plan::default()
    };
    let mut traffic = Traffic::new(plan, tally_agent::now_ms());
    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {api_key}"))?,
    );
    let http = reqwest::Client::builder()
        .default_headers(auth)
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(10))
        .build()?;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Beacon, Outcome)>();
    let slots = Arc::new(Semaphore::new(128));
    let mut view = View {
        started: Instant::now(),
        duration: a.duration,
        lines: 0,
        tty: std::io::stdout().is_terminal(),
        last_plain: Instant::now(),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut next_draw = Instant::now();
    let mut in_flight = 0usize;
    let mut closing = false;
    let mut restarted = false;
    let mut live_report: Option<Vec<String>> = None;
    let deadline = view.started + a.duration;
    let hard_stop = deadline + Duration::from_secs(30);
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        tokio::spawn(async move {
            crate::shutdown_signal().await;
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    loop {
        tick.tick().await;
        let now = Instant::now();
        let stop = now >= deadline || interrupted.load(std::sync::atomic::Ordering::Relaxed);
        if !restarted && !stop && now >= view.started + a.duration / 2 {
            // Half-way, the first agent is stopped and started again on its spool: players
            // whose beacons fail meanwhile retry, and sessions go on at the new process.
            restarted = true;
            let old = stack.agents.remove(0);
            old.shutdown(Duration::from_secs(5)).await;
            let cfg = stack.agent_cfgs[0].clone();
            let fresh = tally_agent::start(cfg).await.context("restarting the fra edge agent")?;
            urls[0] = format!("http://{}/v1/events", fresh.addr);
            stack.agents.insert(0, fresh);
        }
        if stop && live_report.is_none() {
            // Before the players leave: let what is in flight land, then compare the live
            // viewers the merger counts with what the players are doing.
            while in_flight > 0 {
                if let Some((b, o)) = done_rx.recv().await {
                    in_flight -= 1;
                    traffic.outcome(&b, o);
                }
            }
            live_report = Some(live_accuracy(&stack, &traffic).await);
        }
        let beacons = if stop && !closing {
            closing = true;
            traffic.close_all(tally_agent::now_ms())
        } else if closing {
            Vec::new()
        } else {
            traffic.tick(tally_agent::now_ms())
        };
        for b in beacons {
            let permit = slots.clone().acquire_owned().await?;
            let (http, url, tx) = (http.clone(), urls[b.pop % urls.len()].clone(), done_tx.clone());
            in_flight += 1;
            tokio::spawn(async move {
                let o = tally_traffic::deliver(&http, &url, &b).await;
                let _ = tx.send((b, o));
                drop(permit);
            });
        }
        while let Ok((b, o)) = done_rx.try_recv() {
            in_flight -= 1;
            traffic.outcome(&b, o);
        }
        if now >= next_draw {
            next_draw = now + Duration::from_secs(1);
            let edge0 = format!("http://{}", stack.agents[0].addr);
            let screen = screen(&stack, &traffic, &http, &merger_http, &edge0, &view, views_before).await;
            view.show(&screen);
        }
        if closing && in_flight == 0 || now >= hard_stop {
            break;
        }
    }
    finish(
        stack,
        &traffic,
        (views_before, before),
        live_report.unwrap_or_default(),
        &a.data_dir,
        a.stay.then_some(dashboard.as_str()),
    )
    .await
}

/// Flushes every agent and waits until the merger acknowledged all their frames.
async fn drain_agents(stack: &Stack, within: Duration) {
    let wait_until = Instant::now() + within;
    loop {
        for r in &stack.agents {
            r.agent.flush().await;
        }
        let pending: usize = stack.agents.iter().map(|r| r.agent.pending_frames()).sum();
        if pending == 0 || Instant::now() > wait_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Live viewers at the merger beside the players' own state, per stream, and the
/// accuracy over all streams (watching and paused apart).
async fn live_accuracy(stack: &Stack, traffic: &Traffic) -> Vec<String> {
    drain_agents(stack, Duration::from_secs(10)).await;
    let truth = traffic.truth();
    let now = tally_agent::now_ms();
    let mut lines = Vec::new();
    let (mut tw, mut tc, mut dw, mut dc) = (0u64, 0u64, 0u64, 0u64);
    for stream in truth.live_streams() {
        let (w, c) = truth.live(stream);
        let got = stack.merger.ingest.read().live(stream, now, 10_000);
        tw += w;
        tc += c;
        dw += got.watching.abs_diff(w);
        dc += got.connected.abs_diff(c);
        lines.push(format!(
            "  {stream}: players {w} watching / {c} paused; Tally {} / {}",
            got.watching, got.connected
        ));
    }
    let pct = |diff: u64, total: u64| {
        if total == 0 {
            100.0
        } else {
            100.0 * (1.0 - diff as f64 / total as f64)
        }
    };
    lines.insert(
        0,
        format!(
            "Live viewers (before the players leave): watching {:.3}%, paused {:.3}%",
            pct(dw, tw),
            pct(dc, tc)
        ),
    );
    lines
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    let r = http.get(url).timeout(Duration::from_millis(800)).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

async fn screen(
    stack: &Stack,
    traffic: &Traffic,
    http: &reqwest::Client,
    merger_http: &str,
    edge0: &str,
    view: &View,
    views_before: u64,
) -> Vec<String> {
    let elapsed = view.started.elapsed().min(view.duration);
    let frac = elapsed.as_secs_f64() / view.duration.as_secs_f64();
    let bar = format!("{:<30}", "#".repeat((frac * 30.0) as usize));
    let t = traffic.truth();
    let counted = stack.merger.ingest.read().total_views() - views_before;
    let viral = if traffic.viral_on(tally_agent::now_ms()) {
        "  << viral spike: viral-0 >>"
    } else {
        ""
    };
    let mut lines = vec![
        format!(
            "Tally demo  [{bar}] {:>4.0}s / {:.0}s{viral}",
            elapsed.as_secs_f64(),
            view.duration.as_secs_f64()
        ),
        format!(
            "players: {:>5} active   beacons sent: {:>7}   events: {:>8}   views (ground truth): {:>6}   counted by Tally: {:>6}",
            traffic.active_sessions(),
            t.beacons,
            t.events,
            t.total_views(),
            counted
        ),
    ];
    let mut pops = Vec::new();
    for (pop, r) in POPS.iter().zip(&stack.agents) {
        let ag = &r.agent;
        let accepted = ag.metrics.events_accepted.load(std::sync::atomic::Ordering::Relaxed);
        pops.push(format!(
            "{pop}: {accepted} events, {} frames waiting",
            ag.pending_frames()
        ));
    }
    let sessions = stack
        .spin
        .kv
        .keys("default")
        .iter()
        .filter(|k| k.starts_with("session/"))
        .count();
    pops.push(format!("{SPIN_POP} (Spin component): {sessions} session records"));
    lines.push(format!("edges: {}", pops.join(" | ")));
    let top = get_json(http, &format!("{merger_http}/v1/top?k=5&from=0")).await;
    let mut top_line = String::from("top videos (merger /v1/top): ");
    if let Some(items) = top.as_ref().and_then(|t| t["items"].as_array()) {
        let shown: Vec<String> = items
            .iter()
            .map(|i| format!("{} {}", i["video"].as_str().unwrap_or("?"), i["views"]))
            .collect();
        top_line.push_str(&shown.join(", "));
    }
    lines.push(top_line);
    let mut live = String::from("live viewers (read at edge fra, pushed by the merger): ");
    for s in 0..3 {
        let stream = format!("live-{s}");
        let (w, c) = t.live(&stream);
        match get_json(http, &format!("{edge0}/v1/live/{stream}")).await {
            Some(j) => live.push_str(&format!(
                "{stream} {} watching {} paused (players: {w}/{c})   ",
                j["watching"], j["connected"]
            )),
            None => live.push_str(&format!("{stream} - (players: {w}/{c})   ")),
        }
    }
    lines.push(live);
    lines
}

impl View {
    fn show(&mut self, lines: &[String]) {
        let mut out = std::io::stdout().lock();
        if self.tty {
            if self.lines > 0 {
                let _ = write!(out, "\x1b[{}A\x1b[J", self.lines);
            }
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
            self.lines = lines.len();
        } else if self.last_plain.elapsed() >= Duration::from_secs(5) || self.lines == 0 {
            self.last_plain = Instant::now();
            self.lines = lines.len();
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
            let _ = writeln!(out);
        }
        let _ = out.flush();
    }
}

async fn finish(
    stack: Stack,
    traffic: &Traffic,
    (views_before, before): (u64, tally_delta::Counts),
    live_report: Vec<String>,
    data_dir: &std::path::Path,
    stay: Option<&str>,
) -> Result<()> {
    // Every agent flushes within a second; wait until every frame is acknowledged.
    drain_agents(&stack, Duration::from_secs(20)).await;
    let truth = traffic.truth();
    let counted = stack.merger.ingest.read().total_views() - views_before;
    let totals = stack.merger.ingest.read().totals();
    let likes = totals.likes - before.likes;
    let (shares, comments) = (totals.shares - before.shares, totals.comments - before.comments);
    let caught = stack.merger.ingest.read().facts.stats.duplicates;
    let expected = truth.total_views();
    // Let the tier writer commit and publish the last minutes for the catalog.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut per_video_diff = 0u64;
    let accuracy = if expected == 0 {
        100.0
    } else {
        100.0 * (1.0 - (counted as f64 - expected as f64).abs() / expected as f64)
    };
    let mut wire = 0u64;
    let mut beacon_bytes = 0u64;
    for r in &stack.agents {
        beacon_bytes += r
            .agent
            .metrics
            .bytes_accepted
            .load(std::sync::atomic::Ordering::Relaxed);
        wire += r
            .agent
            .shipping
            .status
            .iter()
            .map(|m| m.bytes.load(std::sync::atomic::Ordering::Relaxed))
            .sum::<u64>();
    }
    let top: HashMap<&str, u64> = truth.top(5).into_iter().collect();
    for (v, n) in &top {
        let got = stack.merger.ingest.read().video(v).map_or(0, |t| t.counts.views);
        per_video_diff += got.abs_diff(*n);
    }
    let dir = data_dir.canonicalize().unwrap_or_else(|_| data_dir.to_path_buf());
    println!();
    println!("Ground truth (views the players produced, after their own retries, duplicates and reloads): {expected}");
    println!("Views Tally counted:                                                                         {counted}");
    println!("Accuracy: {accuracy:.3}%   (top-5 videos: {per_video_diff} views apart in total)");
    let exact = |got: i64, want: i64| {
        if want == 0 {
            if got == 0 { 100.0 } else { 0.0 }
        } else {
            100.0 * (1.0 - (got - want).abs() as f64 / want as f64)
        }
    };
    let (want_shares, want_comments) = truth.shares_comments();
    println!(
        "Likes: players {} / Tally {likes} ({:.3}%); shares {want_shares} / {shares} ({:.3}%); comments {want_comments} / {comments} ({:.3}%)",
        truth.total_likes(),
        exact(likes, truth.total_likes()),
        exact(shares as i64, want_shares as i64),
        exact(comments as i64, want_comments as i64),
    );
    println!(
        "Copies the merger caught (POP switches, cross-POP retries, the agent restart): {} views, {} shares, {} comments, {} likes that changed nothing",
        caught[0], caught[2], caught[3], caught[4]
    );
    for l in &live_report {
        println!("{l}");
    }
    println!(
        "Beacons: {} ({} events, {} bytes); delta frames the agents shipped: {} bytes ({:.2}% of their beacon bytes)",
        truth.beacons,
        truth.events,
        truth.bytes,
        wire,
        if beacon_bytes > 0 {
            100.0 * wire as f64 / beacon_bytes as f64
        } else {
            0.0
        }
    );
    println!();
    println!("Data is in {}:", dir.display());
    println!("  frame log      {}/log/", dir.display());
    println!("  hot (minutes)  {}/hot.duckdb", dir.display());
    println!("  warm (hours)   {}/warm.duckdb", dir.display());
    println!(
        "  catalog        {}/catalog.duckdb  (views over every tier, for analysts)",
        dir.display()
    );
    println!("  edge spools    {}/edges/", dir.display());
    println!("  (the Spin POP keeps its sessions in the harness's in-memory key-value store)");
    println!("Try:");
    println!(
        "  duckdb {}/catalog.duckdb \"select video, sum(views) as views from views group by video order by views desc limit 5\"",
        dir.display()
    );
    println!(
        "  cargo run -p tally -- query --data-dir {} \"select country, sum(views) as views from views group by country order by views desc\"",
        dir.display()
    );
    if let Some(url) = stay {
        println!("The merger and the edges keep running: the dashboard is at {url} (Ctrl-C stops).");
        tokio::signal::ctrl_c().await?;
    }
    for r in stack.agents {
        r.shutdown(Duration::from_secs(2)).await;
    }
    drop(stack.spin);
    stack.merger.shutdown().await;
    Ok(())
}
