//! `tally edge`: the edge agent daemon.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tally_agent::config::{AgentConfig, MergerTarget};

/// Flags of `tally edge` (they override the config file).
#[derive(clap::Args)]
pub(crate) struct EdgeArgs {
    /// TOML config file (flags override it); see README.md for the fields.
    #[arg(long)]
    config: Option<PathBuf>,
    /// POP id, e.g. `fra`.
    #[arg(long)]
    pop: Option<String>,
    /// Id the mergers know this agent by (default: the POP id).
    #[arg(long)]
    edge_id: Option<String>,
    /// Secret the mergers know this agent by.
    #[arg(long, env = "TALLY_EDGE_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// A merger as ADDR=FINGERPRINT (repeatable; each gets every frame).
    #[arg(long = "merger", value_name = "ADDR=FINGERPRINT")]
    mergers: Vec<MergerTarget>,
    /// HTTP address for beacons and reads (port 0 picks one).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Spool directory.
    #[arg(long)]
    spool_dir: Option<PathBuf>,
    /// Most bytes the spool may hold.
    #[arg(long)]
    spool_max_bytes: Option<u64>,
    /// How often frames are flushed and shipped, e.g. `1s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    flush_interval: Option<Duration>,
    /// Collector instances (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Run this collector.wasm instead of the one built into tally.
    #[arg(long)]
    component: Option<PathBuf>,
    /// Run the collector compiled into tally instead of under wasmtime.
    #[arg(long)]
    native: bool,
    /// Answer beacons before they are durable (no write-ahead log): faster, but a crash
    /// loses up to one flush interval of accepted beacons.
    #[arg(long)]
    no_wal: bool,
    /// Key that signs playback tokens.
    #[arg(long, env = "TALLY_TOKEN_KEY", hide_env_values = true)]
    token_key: Option<String>,
    /// Trusted header with the viewer's country (default cf-ipcountry).
    #[arg(long)]
    country_header: Option<String>,
    /// Trusted header with the viewer's address, when behind a proxy.
    #[arg(long)]
    client_addr_header: Option<String>,
    /// Bearer token for POST /admin/component.
    #[arg(long, env = "TALLY_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

impl EdgeArgs {
    /// The config these flags and the file give.
    pub(crate) fn config(self) -> Result<AgentConfig> {
        let mut c = match &self.config {
            Some(p) => AgentConfig::from_file(p)?,
            None => AgentConfig::default(),
        };
        macro_rules! set {
            ($($f:ident => $t:ident),* $(,)?) => { $( if let Some(v) = self.$f { c.$t = v; } )* };
        }
        set!(pop => pop_id, edge_id => edge_id, secret => secret, listen => listen, spool_dir => spool_dir,
             spool_max_bytes => spool_max_bytes, workers => workers, token_key => token_key,
             country_header => country_header);
        if let Some(d) = self.flush_interval {
            c.flush_interval_ms = d.as_millis() as u64;
        }
        if !self.mergers.is_empty() {
            c.mergers = self.mergers;
        }
        if self.component.is_some() {
            c.component = self.component;
        }
        if self.native {
            c.native = true;
        }
        if self.no_wal {
            c.wal = false;
        }
        if self.client_addr_header.is_some() {
            c.client_addr_header = self.client_addr_header;
        }
        if self.admin_token.is_some() {
            c.admin_token = self.admin_token;
        }
        c.validate()?;
        Ok(c)
    }
}

/// Runs the agent until SIGTERM or Ctrl-C; SIGHUP reloads the component.
pub(crate) fn run(a: EdgeArgs) -> Result<()> {
    let cfg = a.config()?;
    crate::init_logs("warn,tally_agent=info");
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let running = tally_agent::start(cfg.clone()).await?;
        eprintln!(
            "tally edge: POP {} taking beacons on http://{}/v1/events, shipping to {} merger(s), spool {}",
            cfg.pop_id,
            running.addr,
            cfg.mergers.len(),
            cfg.spool_dir.display()
        );
        println!(
            "{}",
            serde_json::json!({ "ready": true, "http": running.addr.to_string() })
        );
        #[cfg(unix)]
        {
            let agent = running.agent.clone();
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("installing the SIGHUP handler")?;
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    match agent.reload_component().await {
                        Ok(()) => eprintln!("tally edge: component reloaded"),
                        Err(e) => eprintln!("tally edge: component reload failed, the old one keeps running: {e}"),
                    }
                }
            });
        }
        crate::shutdown_signal().await;
        eprintln!("tally edge: shutting down (flushing and shipping what is left)");
        running.shutdown(Duration::from_secs(3)).await;
        anyhow::Ok(())
    })
}
