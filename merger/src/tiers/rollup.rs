//! Rollups, cold export and retention: hours that changed in hot are recomputed into
//! warm (replace, never add), days that can no longer change are exported to cold
//! Parquet, complete months are compacted into one file, and each tier's retention is
//! applied. Every step is idempotent: a crash mid-rollup just redoes it.

use super::calendar::{date_of_day, month_days, partition_days};
use super::sql::sql_str;
use super::{COLD_ROW_GROUP, DIMS, MEASURES, Result, RollupReport, Tiers};
use duckdb::{Connection, params};
use std::collections::BTreeMap;
use std::path::Path;

impl Tiers {
    /// Recomputes changed hours into warm, exports finished days to cold, applies
    /// retention. Every step is idempotent. `now_ms` is the merger's clock.
    pub fn rollup(&mut self, now_ms: u64) -> Result<RollupReport> {
        let mut report = RollupReport::default();
        let dirty = self.column_i64("SELECT hour FROM main.dirty_hours ORDER BY hour", [])?;
        let exported = self.column_i64("SELECT day FROM warm.cold_days", [])?;
        // Hours whose minutes hot retention deleted get their late rows added to warm
        // (see `late`); the others are recomputed from their minutes.
        let mut changed = Vec::new();
        for hour in dirty {
            if self.is_sealed(hour)? {
                self.stage_late_hour(hour)?;
            } else {
                self.rollup_hour(hour)?;
                changed.push(hour);
            }
        }
        let late = self.apply_late_batches()?;
        report.late_hours = late.len();
        changed.extend(late);
        for hour in changed {
            let day = hour.div_euclid(24);
            if exported.contains(&day) {
                // Late rows for a day already in cold: export the day again (below) and
                // rewrite its month file, so they reach every tier exactly once.
                self.conn
                    .execute("DELETE FROM warm.cold_days WHERE day = ?", params![day])?;
                let month = &date_of_day(day)[..7];
                let file = self.dir.join(format!("cold/month/month={month}/data.parquet"));
                if file.exists() {
                    std::fs::remove_file(&file)?;
                }
                report.cold_redone += 1;
            }
            // warm is written; only now is the hour marked clean (a crash in between redoes it)
            self.conn.execute(
                "INSERT OR IGNORE INTO main.unpublished_days VALUES (?)",
                params![hour.div_euclid(24)],
            )?;
            self.conn
                .execute("DELETE FROM main.dirty_hours WHERE hour = ?", params![hour])?;
            report.hours += 1;
        }
        let today = (now_ms / 86_400_000) as i64;
        // A day is final once the lateness bound (24 h) has passed after it ends.
        let final_before = today - 1;
        let days = self.column_i64(
            "SELECT DISTINCT hour // 24 AS day FROM warm.hour_counts WHERE hour // 24 < ?
             AND hour // 24 NOT IN (SELECT day FROM warm.cold_days) ORDER BY day",
            params![final_before],
        )?;
        for day in days {
            self.export_cold(day)?;
            self.conn
                .execute("INSERT OR IGNORE INTO warm.cold_days VALUES (?)", params![day])?;
            report.cold_days += 1;
        }
        if report.cold_days > 0 {
            compact_months(&self.conn, &self.dir)?;
        }
        let r = self.retention;
        report.hot_deleted = self.delete_hot_before((today - r.hot_days) * 1440)?;
        report.warm_deleted = self.conn.execute(
            "DELETE FROM warm.hour_counts WHERE hour < ? AND hour // 24 IN (SELECT day FROM warm.cold_days)",
            params![(today - r.warm_days) * 24],
        )?;
        self.conn.execute(
            "DELETE FROM warm.hour_uniques WHERE hour < ? AND hour // 24 IN (SELECT day FROM warm.cold_days)",
            params![(today - r.warm_days) * 24],
        )?;
        self.remove_expired(today)?;
        Ok(report)
    }

    pub(super) fn rollup_hour(&mut self, hour: i64) -> Result<()> {
        let (lo, hi) = (hour * 60, hour * 60 + 60);
        let merged = self.merged_sketches(
            "SELECT video, sketch FROM main.minute_uniques WHERE minute >= ? AND minute < ?",
            lo,
            hi,
        )?;
        self.in_transaction(|| {
            self.conn.execute("DELETE FROM warm.hour_counts WHERE hour = ?", params![hour])?;
            self.conn.execute("DELETE FROM warm.hour_uniques WHERE hour = ?", params![hour])?;
            self.conn.execute(
                &format!(
                    "INSERT INTO warm.hour_counts SELECT ?::BIGINT, {DIMS}, sum(views), sum(watch_ms), sum(completions), sum(likes),
                        sum(shares), sum(comments) FROM main.minute_counts WHERE minute >= ? AND minute < ? GROUP BY ALL"
                ),
                params![hour, lo, hi],
            )?;
            let mut put = self.conn.prepare("INSERT INTO warm.hour_uniques VALUES (?, ?, ?)")?;
            for (video, sketch) in &merged {
                put.execute(params![hour, video, sketch.to_bytes()])?;
            }
            Ok(())
        })
    }

    pub(super) fn export_cold(&self, day: i64) -> Result<()> {
        let date = date_of_day(day);
        let (lo, hi) = (day * 24, day * 24 + 24);
        let cold = format!(", ROW_GROUP_SIZE {COLD_ROW_GROUP}");
        self.copy_parquet_opts(
            &format!("SELECT epoch_ms(hour * 3600000) AS ts, {DIMS}, {MEASURES} FROM warm.hour_counts WHERE hour >= {lo} AND hour < {hi} ORDER BY video, hour"),
            &self.dir.join(format!("cold/hour/date={date}/data.parquet")),
            &cold,
        )?;
        self.copy_parquet_opts(
            &format!(
                "SELECT epoch_ms({day}::BIGINT * 86400000) AS ts, {DIMS}, sum(views)::UBIGINT AS views, sum(watch_ms)::UBIGINT AS watch_ms,
                   sum(completions)::UBIGINT AS completions, sum(likes)::BIGINT AS likes, sum(shares)::UBIGINT AS shares,
                   sum(comments)::UBIGINT AS comments
                 FROM warm.hour_counts WHERE hour >= {lo} AND hour < {hi} GROUP BY ALL ORDER BY channel, video"
            ),
            &self.dir.join(format!("cold/day/date={date}/data.parquet")),
            &cold,
        )?;
        let merged = self.merged_sketches(
            "SELECT video, sketch FROM warm.hour_uniques WHERE hour >= ? AND hour < ?",
            lo,
            hi,
        )?;
        self.conn.execute_batch("DELETE FROM main.day_uniques_staging")?;
        {
            let mut app = self.conn.appender("day_uniques_staging")?;
            for (video, sketch) in &merged {
                app.append_row(params![day, video, sketch.to_bytes()])?;
            }
            app.flush()?;
        }
        self.copy_parquet(
            "SELECT epoch_ms(day * 86400000) AS ts, video, sketch FROM main.day_uniques_staging",
            &self.dir.join(format!("cold/day_uniques/date={date}/data.parquet")),
        )?;
        Ok(())
    }

    /// Deletes published and cold partitions older than their tier's retention.
    pub(super) fn remove_expired(&self, today: i64) -> Result<()> {
        let r = self.retention;
        // Removes every partition directory under `sub` whose name `expired` accepts.
        let sweep = |sub: &str, expired: &dyn Fn(&str) -> bool| -> Result<()> {
            let Ok(entries) = std::fs::read_dir(self.dir.join(sub)) else {
                return Ok(());
            };
            for e in entries.flatten() {
                if expired(&e.file_name().to_string_lossy()) {
                    std::fs::remove_dir_all(e.path())?;
                }
            }
            Ok(())
        };
        // The epoch day of a `hour=<n>` (per_day 24) or `day=<n>` (per_day 1) partition.
        let day_of = |name: &str, prefix: &str, per_day: i64| {
            name.strip_prefix(prefix)
                .and_then(|n| n.parse::<i64>().ok())
                .map(|n| n.div_euclid(per_day))
        };
        let cold_before = date_of_day(today - r.cold_days);
        for sub in ["published/minute", "published/minute_uniques"] {
            sweep(sub, &|n| day_of(n, "hour=", 24).is_some_and(|d| d < today - r.hot_days))?;
        }
        for sub in ["published/hour", "published/hour_uniques"] {
            sweep(sub, &|n| day_of(n, "day=", 1).is_some_and(|d| d < today - r.warm_days))?;
        }
        for sub in ["cold/hour", "cold/day", "cold/day_uniques"] {
            sweep(sub, &|n| {
                n.strip_prefix("date=").is_some_and(|d| d < cold_before.as_str())
            })?;
        }
        // A month file goes with the month's first day: its later days are read from
        // their day files until they expire too.
        sweep("cold/month", &|n| {
            n.strip_prefix("month=")
                .and_then(month_days)
                .is_some_and(|(first, _)| first < today - r.cold_days)
        })?;
        Ok(())
    }
}

/// Writes the month files (`cold/month/month=YYYY-MM/data.parquet`: the month's day rows,
/// sorted by channel and video) of every month that is complete, meaning the cold tier
/// holds a day of a later month, and has no month file yet. Days reach cold in order, so
/// a complete month's day files no longer change. Returns how many were written.
pub fn compact_months(conn: &Connection, dir: &Path) -> Result<usize> {
    let days = partition_days(dir, "cold/day");
    let Some(latest) = days.last().map(|d| date_of_day(*d)) else {
        return Ok(0);
    };
    let mut months: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for date in days.iter().map(|d| date_of_day(*d)) {
        if date[..7] < latest[..7] {
            months.entry(date[..7].to_owned()).or_default().push(date);
        }
    }
    let mut written = 0;
    for (month, days) in months {
        let path = dir.join(format!("cold/month/month={month}/data.parquet"));
        if path.exists() {
            continue;
        }
        let files: Vec<String> = days
            .iter()
            .map(|d| sql_str(&dir.join(format!("cold/day/date={d}/data.parquet")).to_string_lossy()))
            .collect();
        std::fs::create_dir_all(path.parent().unwrap_or(dir))?;
        let tmp = path.with_extension("parquet.tmp");
        conn.execute_batch(&format!(
            "COPY (SELECT * FROM read_parquet([{}]) ORDER BY channel, video, ts) TO {} (FORMAT parquet, ROW_GROUP_SIZE {COLD_ROW_GROUP})",
            files.join(", "),
            sql_str(&tmp.to_string_lossy())
        ))?;
        std::fs::rename(&tmp, &path)?;
        written += 1;
    }
    Ok(written)
}
