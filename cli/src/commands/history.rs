//! `tally history`: years of synthetic history into a data directory's cold tier.

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub(crate) struct HistoryArgs {
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

pub(crate) fn run(a: HistoryArgs) -> Result<()> {
    if a.days <= 0 || a.days > 20 * 366 {
        bail!("--days must be between 1 and 7320");
    }
    let today = (tally_delta::now_ms() / 86_400_000) as i64;
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
