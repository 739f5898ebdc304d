//! `tally`: one binary for every Tally role.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tally_collector::{Claims, token};

mod demo;
mod edge;
mod keys;

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Count video views at the edge, exactly and within a second",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline on this machine with generated traffic.
    Demo(demo::DemoArgs),
    /// Run the central merger daemon.
    Merger(MergerArgs),
    /// Run an edge agent hosting collector.wasm.
    Edge(Box<edge::EdgeArgs>),
    /// Mint a signed playback token for a video.
    Token(TokenArgs),
    /// Create, list and revoke API keys for analytics and top lists.
    Keys(keys::KeysArgs),
    /// Run SQL over all of history (the catalog), for people without DuckDB installed.
    Query(QueryArgs),
    /// Generate years of synthetic history into a data directory's cold tier (benchmarks).
    History(HistoryArgs),
}

#[derive(clap::Args)]
struct HistoryArgs {
    /// Data directory to write into (its cold tier; use a fresh one, not a real merger's).
    #[arg(long)]
    data_dir: std::path::PathBuf,
    /// Days of history, ending yesterday.
    #[arg(long, default_value_t = 1095)]
    days: i64,
    /// Distinct videos, Zipf-popular.
    #[arg(long, default_value_t = 100_000)]
    videos: u64,
    /// Channels (video n belongs to channel n mod channels).
    #[arg(long, default_value_t = 5_000)]
    channels: u64,
    /// Hourly rows per hour of history (11,000 gives about 290 million rows in 3 years).
    #[arg(long, default_value_t = 11_000)]
    rows_per_hour: u64,
}

#[derive(clap::Args)]
struct QueryArgs {
    /// The SQL, e.g. "select video, sum(views) from views group by video order by 2 desc limit 10".
    sql: String,
    /// The merger's data directory.
    #[arg(long, default_value = "data")]
    data_dir: std::path::PathBuf,
}

#[derive(Subcommand)]
enum MergerAction {
    /// Rebuild every tier from the frame log (stop the merger first).
    Rebuild,
}

#[derive(clap::Args)]
struct MergerArgs {
    #[command(subcommand)]
    action: Option<MergerAction>,
    /// How often changed history is published for the catalog, e.g. `10s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    publish_interval: Option<Duration>,
    /// How often hours are rolled up to warm, days exported to cold and retention applied.
    #[arg(long, value_parser = humantime::parse_duration)]
    rollup_interval: Option<Duration>,
    /// TOML config file (flags override it).
    #[arg(long, global = true)]
    config: Option<std::path::PathBuf>,
    /// Data directory: frame log, certificates, tiers.
    #[arg(long, global = true)]
    data_dir: Option<std::path::PathBuf>,
    /// UDP address for QUIC from edges (port 0 picks one).
    #[arg(long)]
    quic_listen: Option<std::net::SocketAddr>,
    /// TCP address for the HTTP API (port 0 picks one).
    #[arg(long)]
    http_listen: Option<std::net::SocketAddr>,
    /// TCP address for the same API over HTTPS, with the QUIC certificate (off by default).
    #[arg(long)]
    https_listen: Option<std::net::SocketAddr>,
    /// An edge allowed to connect, as ID=SECRET (repeatable). Visible to anyone who can
    /// list processes: prefer --edges-file or the config file.
    #[arg(long = "edge", value_name = "ID=SECRET")]
    edges: Vec<String>,
    /// A file of edges allowed to connect, one ID=SECRET per line (`#` starts a comment).
    #[arg(long, env = "TALLY_EDGES_FILE", value_name = "PATH")]
    edges_file: Option<std::path::PathBuf>,
    /// Take frames on the plain HTTP listener too (they carry edge secrets in the clear:
    /// for tests on loopback).
    #[arg(long)]
    http_frames: bool,
    /// Bearer token for operator endpoints.
    #[arg(long, env = "TALLY_OPERATOR_TOKEN", hide_env_values = true)]
    operator_token: Option<String>,
    /// PEM certificate for QUIC (default: self-signed, made on first start).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// Video id.
    #[arg(long)]
    video: String,
    /// Channel id.
    #[arg(long)]
    channel: String,
    /// Category.
    #[arg(long, default_value = "other")]
    category: String,
    /// The video is a live stream.
    #[arg(long)]
    live: bool,
    /// The viewer session the token is for: the player must send it as `session_id`.
    #[arg(long)]
    session: String,
    /// How long the token is valid, e.g. `6h` or `30m`.
    #[arg(long, default_value = "4h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Signing key shared with the edges (at least 16 bytes).
    #[arg(long, env = "TALLY_TOKEN_KEY", hide_env_values = true)]
    key: String,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Token(a) => mint(a),
        Command::Keys(a) => keys::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Merger(a) => merger(a),
        Command::Query(a) => query(a),
        Command::History(a) => history(a),
        Command::Edge(a) => edge::run(*a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn mint(a: TokenArgs) -> Result<()> {
    if a.key.len() < 16 {
        bail!("--key (or TALLY_TOKEN_KEY) must be at least 16 bytes; edges refuse shorter keys");
    }
    if a.video.is_empty() || a.channel.is_empty() || a.session.is_empty() {
        bail!("--video, --channel and --session must not be empty");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock is before 1970")?;
    let claims = Claims {
        video: a.video,
        channel: a.channel,
        category: a.category,
        expires_s: (now + a.ttl).as_secs(),
        live: a.live,
        session: a.session,
        issued_s: now.as_secs(),
    };
    println!("{}", token::mint(a.key.as_bytes(), &claims));
    Ok(())
}

fn merger(a: MergerArgs) -> Result<()> {
    let mut cfg = match &a.config {
        Some(p) => tally_merger::MergerConfig::from_file(p)?,
        None => tally_merger::MergerConfig::default(),
    };
    if let Some(d) = a.data_dir {
        cfg.data_dir = d;
    }
    if let Some(q) = a.quic_listen {
        cfg.quic_listen = q;
    }
    if let Some(h) = a.http_listen {
        cfg.http_listen = h;
    }
    if a.https_listen.is_some() {
        cfg.https_listen = a.https_listen;
    }
    let mut edges: Vec<(String, String)> = a.edges.iter().map(|e| ("--edge".to_string(), e.clone())).collect();
    if let Some(p) = &a.edges_file {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading --edges-file {}", p.display()))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if !line.is_empty() {
                edges.push((format!("{} line {}", p.display(), i + 1), line.to_owned()));
            }
        }
    }
    for (whence, e) in &edges {
        let Some((id, secret)) = e.split_once('=') else {
            bail!("{whence}: expected ID=SECRET");
        };
        let (id, secret) = (id.trim(), secret.trim());
        if id.is_empty() || secret.len() < 8 {
            bail!("{whence}: the edge id must not be empty and the secret must have at least 8 characters");
        }
        cfg.edges.insert(id.to_owned(), secret.to_owned());
    }
    if a.http_frames {
        cfg.http_frames = true;
    }
    if a.operator_token.is_some() {
        cfg.operator_token = a.operator_token;
    }
    if a.tls_cert.is_some() {
        cfg.tls_cert = a.tls_cert;
        cfg.tls_key = a.tls_key;
    }
    if let Some(d) = a.publish_interval {
        cfg.publish_interval_ms = d.as_millis() as u64;
    }
    if let Some(d) = a.rollup_interval {
        cfg.rollup_interval_ms = d.as_millis() as u64;
    }
    if let Some(MergerAction::Rebuild) = a.action {
        let n = tally_merger::rebuild(&cfg)?;
        eprintln!(
            "tally merger rebuild: replayed {n} frames into fresh tiers under {}",
            cfg.data_dir.display()
        );
        return Ok(());
    }
    if cfg.edges.is_empty() {
        eprintln!("tally merger: warning: no edges configured (--edge ID=SECRET); every edge will be refused");
    }
    init_logs("warn,tally_merger=info");
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let running = tally_merger::start(cfg.clone()).await?;
        if running.created_cert {
            eprintln!(
                "tally merger: created a self-signed certificate in {}",
                cfg.data_dir.join("tls").display()
            );
        }
        eprintln!(
            "tally merger: QUIC on {} (edges pin certificate sha256 {}), HTTP API on http://{}",
            running.quic_addr, running.fingerprint, running.http_addr
        );
        // One machine-readable line on stdout for scripts and tests.
        println!(
            "{}",
            serde_json::json!({
                "ready": true, "quic": running.quic_addr.to_string(), "http": running.http_addr.to_string(),
                "https": running.https_addr.map(|a| a.to_string()), "fingerprint": running.fingerprint,
            })
        );
        shutdown_signal().await;
        eprintln!("tally merger: shutting down");
        running.shutdown().await;
        anyhow::Ok(())
    })
}

fn history(a: HistoryArgs) -> Result<()> {
    if a.days <= 0 || a.days > 20 * 366 {
        bail!("--days must be between 1 and 7320");
    }
    let today = (SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() / 86_400) as i64;
    let spec = tally_merger::history::HistorySpec {
        days: a.days,
        end_day: today,
        videos: a.videos,
        channels: a.channels,
        rows_per_hour: a.rows_per_hour,
        seed: 0.42,
    };
    let started = std::time::Instant::now();
    let sum = tally_merger::history::generate(&a.data_dir, &spec, |day, s| {
        if s.days % 30 == 0 {
            eprintln!(
                "tally history: {} / {} days ({}), {} hourly rows so far",
                s.days,
                a.days,
                tally_merger::tiers::date_of_day(day),
                s.hour_rows
            );
        }
    })?;
    eprintln!(
        "tally history: {} days, {} hourly rows, {} daily rows, {} views in {:.0?} under {}",
        sum.days,
        sum.hour_rows,
        sum.day_rows,
        sum.views,
        started.elapsed(),
        a.data_dir.join("cold").display()
    );
    Ok(())
}

fn query(a: QueryArgs) -> Result<()> {
    if !a.data_dir.join("catalog.duckdb").exists() {
        bail!(
            "no catalog at {}: point --data-dir at a merger's data directory",
            a.data_dir.join("catalog.duckdb").display()
        );
    }
    let (names, rows) = tally_merger::tiers::query_catalog(&a.data_dir, &a.sql)?;
    let mut widths: Vec<usize> = names.iter().map(|n| n.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    println!("{}", line(&names));
    println!(
        "{}",
        widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-")
    );
    for r in &rows {
        println!("{}", line(r));
    }
    eprintln!("({} rows)", rows.len());
    Ok(())
}

/// Logs to stderr, filtered by `TALLY_LOG` (default `default`).
fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG").unwrap_or_else(|_| default.into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
}
