//! `tally`: one binary for every Tally role.

use clap::{Parser, Subcommand};
use commands::{demo, edge, history, keys, merger, query, token};
use std::process::ExitCode;

mod commands;

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
    Merger(merger::MergerArgs),
    /// Run an edge agent hosting collector.wasm.
    Edge(Box<edge::EdgeArgs>),
    /// Mint a signed playback token for a video.
    Token(token::TokenArgs),
    /// Create, list and revoke API keys for analytics and top lists.
    Keys(keys::KeysArgs),
    /// Run SQL over all of history (the catalog), for people without DuckDB installed.
    Query(query::QueryArgs),
    /// Generate years of synthetic history into a data directory's cold tier (benchmarks).
    History(history::HistoryArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Token(a) => token::run(a),
        Command::Keys(a) => keys::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Merger(a) => merger::run(a),
        Command::Query(a) => query::run(a),
        Command::History(a) => history::run(a),
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
