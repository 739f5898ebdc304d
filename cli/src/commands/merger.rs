//! `tally merger`: the merger daemon, and `tally merger rebuild`.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::time::Duration;

#[derive(Subcommand)]
enum MergerAction {
    /// Rebuild every tier from the frame log (stop the merger first).
    Rebuild,
}

#[derive(clap::Args)]
pub(crate) struct MergerArgs {
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
    /// Cluster mode: the NATS servers of the cluster's frame log, comma-separated
    /// (`nats://10.0.0.1:4222,nats://10.0.0.2:4222`). Without it: one process, local log.
    #[arg(long, value_delimiter = ',', value_name = "NATS_URLS")]
    cluster: Vec<String>,
    /// This merger's id in the cluster (unique per running merger).
    #[arg(long, requires = "cluster")]
    node_id: Option<String>,
    /// Partitions of the cluster's log, used when it is first created.
    #[arg(long, requires = "cluster")]
    partitions: Option<u32>,
    /// Copies of the cluster's log in the NATS cluster (3; 1 for a single NATS server).
    #[arg(long, requires = "cluster")]
    replicas: Option<usize>,
    /// How long a partition lease lasts without renewal, e.g. `6s`.
    #[arg(long, requires = "cluster", value_parser = humantime::parse_duration)]
    lease: Option<Duration>,
}

pub(crate) fn run(a: MergerArgs) -> Result<()> {
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
    if !a.cluster.is_empty() {
        cfg.cluster = a.cluster;
    }
    if let Some(n) = a.node_id {
        cfg.node_id = n;
    }
    if let Some(p) = a.partitions {
        if p == 0 {
            bail!("--partitions must be at least 1");
        }
        cfg.partitions = p;
    }
    if let Some(r) = a.replicas {
        if !(1..=5).contains(&r) {
            bail!("--replicas must be between 1 and 5");
        }
        cfg.cluster_replicas = r;
    }
    if let Some(d) = a.lease {
        cfg.lease_ms = d.as_millis() as u64;
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
    crate::init_logs("warn,tally_merger=info");
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
        crate::shutdown_signal().await;
        eprintln!("tally merger: shutting down");
        running.shutdown().await;
        anyhow::Ok(())
    })
}
