//! `tally keys`: API keys for the merger's analytics and top lists (create, list, revoke).

use anyhow::Result;
use comfy_table::Table;
use std::path::PathBuf;
use tally_merger::keys::{self, Scope};

/// Manage API keys.
#[derive(clap::Args)]
pub(crate) struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(clap::Subcommand)]
enum KeysCommand {
    /// Create a key; it is printed once, and only its hash is kept.
    Create {
        /// The merger's data directory (the keys are in its `keys.json`).
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// What the key is for.
        #[arg(long)]
        name: String,
        /// `platform` (everything) or `channel:<channel id>` (one channel's videos).
        #[arg(long)]
        scope: Scope,
        /// Requests a minute the key may make.
        #[arg(long, default_value_t = keys::DEFAULT_PER_MIN)]
        per_min: u32,
    },
    /// List the keys (never their secrets).
    List {
        /// The merger's data directory.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
    },
    /// Revoke a key by its id; a running merger refuses it within a second.
    Revoke {
        /// The merger's data directory.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// The key's id (see `tally keys list`).
        id: String,
    },
}

/// Runs `tally keys`.
pub(crate) fn run(a: KeysArgs) -> Result<()> {
    match a.command {
        KeysCommand::Create {
            data_dir,
            name,
            scope,
            per_min,
        } => {
            let (rec, key) = keys::create(&keys::path_in(&data_dir), &name, scope, per_min)?;
            eprintln!(
                "created key {} ({}, {} requests a minute); it is shown only now:",
                rec.id, rec.scope, rec.per_min
            );
            println!("{key}");
        }
        KeysCommand::List { data_dir } => {
            let mut t = Table::new();
            t.set_header(["id", "name", "scope", "per min", "created (ms)", "revoked (ms)"]);
            for k in keys::list(&keys::path_in(&data_dir))? {
                t.add_row([
                    k.id,
                    k.name,
                    k.scope.to_string(),
                    k.per_min.to_string(),
                    k.created_ms.to_string(),
                    k.revoked_ms.map_or_else(|| "-".to_string(), |r| r.to_string()),
                ]);
            }
            println!("{t}");
        }
        KeysCommand::Revoke { data_dir, id } => {
            let rec = keys::revoke(&keys::path_in(&data_dir), &id)?;
            eprintln!("revoked key {} ({})", rec.id, rec.name);
        }
    }
    Ok(())
}
