//! `tally token`: mints a playback token (an HS256 JWT bound to one viewer session).

use anyhow::{Result, bail};
use std::time::Duration;
use tally_collector::{Claims, token};

#[derive(clap::Args)]
pub(crate) struct TokenArgs {
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
    /// The signed-in user, if any: likes, shares and comments count once per (user,
    /// video) across the user's sessions. Without it they are the session's.
    #[arg(long)]
    user: Option<String>,
    /// How long the token is valid, e.g. `6h` or `30m`.
    #[arg(long, default_value = "4h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Signing key shared with the edges (at least 16 bytes).
    #[arg(long, env = "TALLY_TOKEN_KEY", hide_env_values = true)]
    key: String,
}

pub(crate) fn run(a: TokenArgs) -> Result<()> {
    if a.key.len() < 16 {
        bail!("--key (or TALLY_TOKEN_KEY) must be at least 16 bytes; edges refuse shorter keys");
    }
    if a.video.is_empty() || a.channel.is_empty() || a.session.is_empty() {
        bail!("--video, --channel and --session must not be empty");
    }
    let now = Duration::from_millis(tally_delta::now_ms());
    let claims = Claims {
        video: a.video,
        channel: a.channel,
        category: a.category,
        expires_s: (now + a.ttl).as_secs(),
        live: a.live,
        session: a.session,
        user: a.user.filter(|u| !u.is_empty()),
        issued_s: now.as_secs(),
    };
    println!("{}", token::mint(a.key.as_bytes(), &claims));
    Ok(())
}
