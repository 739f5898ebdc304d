//! `tally`: one binary for every Tally role.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tally_collector::{Claims, token};

#[derive(Parser)]
#[command(name = "tally", version, about = "Count video views at the edge, exactly and within a second")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline on this machine with generated traffic.
    Demo,
    /// Run the central merger daemon.
    Merger,
    /// Run an edge agent hosting collector.wasm.
    Edge,
    /// Mint a signed playback token for a video.
    Token(TokenArgs),
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
    /// How long the token is valid, e.g. `6h` or `30m`.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Signing key shared with the edges (at least 16 bytes).
    #[arg(long, env = "TALLY_TOKEN_KEY", hide_env_values = true)]
    key: String,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Token(a) => mint(a),
        Command::Demo => not_yet("demo", "the merger (issue 3) and the edge agent (issue 4)"),
        Command::Merger => not_yet("merger", "issue 3"),
        Command::Edge => not_yet("edge", "issue 4"),
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
    if a.video.is_empty() || a.channel.is_empty() {
        bail!("--video and --channel must not be empty");
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("system clock is before 1970")?;
    let claims = Claims {
        video: a.video,
        channel: a.channel,
        category: a.category,
        expires_s: (now + a.ttl).as_secs(),
        live: a.live,
    };
    println!("{}", token::mint(a.key.as_bytes(), &claims));
    Ok(())
}

fn not_yet(cmd: &str, needs: &str) -> Result<()> {
    bail!("`tally {cmd}` is not built yet: it needs {needs}. The collector (collector.wasm) and `tally token` work today; see README.md")
}
