//! Late rows for hours whose minutes hot retention already deleted ("sealed" hours).
//!
//! Such an hour's warm rows are the only copy of what it held, so its late minutes must
//! be added to them, not recomputed from hot (which would keep only the late rows).
//! Hot and warm are two DuckDB files and one transaction cannot write both, so the
//! addition goes in three idempotent steps:
//!
//! 1. hot: the hour's late minute rows move into a numbered batch (`late_counts`,
//!    `late_uniques`, `late_batches`) and the hour is marked clean;
//! 2. warm: unless `warm.late_applied` has the batch, its rows are added to the hour
//!    (then the hour is re-aggregated, so each dimension has one row) and the batch is
//!    recorded, in one transaction;
//! 3. hot: the batch is deleted.
//!
//! A crash between any two steps redoes only what is missing: a batch still in hot is
//! applied again at the next rollup unless warm recorded it.

use super::{DIMS, Result, Tiers};
use duckdb::params;

/// Measures summed when an hour is re-aggregated (saturating like every upsert).
const SUMS: &str = "least(sum(views::HUGEINT), 18446744073709551615::HUGEINT)::UBIGINT,
    least(sum(watch_ms::HUGEINT), 18446744073709551615::HUGEINT)::UBIGINT,
    least(sum(completions::HUGEINT), 18446744073709551615::HUGEINT)::UBIGINT,
    greatest(least(sum(likes::HUGEINT), 9223372036854775807::HUGEINT), -9223372036854775808::HUGEINT)::BIGINT,
    least(sum(shares::HUGEINT), 18446744073709551615::HUGEINT)::UBIGINT,
    least(sum(comments::HUGEINT), 18446744073709551615::HUGEINT)::UBIGINT";

impl Tiers {
    /// Creates the tables of this module.
    pub(super) fn create_late_tables(&self) -> Result<()> {
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS main.sealed_hours (hour BIGINT PRIMARY KEY);
             CREATE TABLE IF NOT EXISTS main.late_batches (batch BIGINT PRIMARY KEY, hour BIGINT NOT NULL);
             CREATE TABLE IF NOT EXISTS main.late_counts AS SELECT 0::BIGINT AS batch, * FROM main.minute_counts LIMIT 0;
             CREATE TABLE IF NOT EXISTS main.late_uniques AS SELECT 0::BIGINT AS batch, * FROM main.minute_uniques LIMIT 0;
             CREATE TABLE IF NOT EXISTS warm.late_applied (batch BIGINT PRIMARY KEY);",
        )?;
        Ok(())
    }

    /// Whether hot retention deleted minutes of `hour`.
    pub(super) fn is_sealed(&self, hour: i64) -> Result<bool> {
        Ok(!self
            .column_i64("SELECT hour FROM main.sealed_hours WHERE hour = ?", params![hour])?
            .is_empty())
    }

    /// Deletes hot minutes before `minute` (except dirty hours'), recording their hours as
    /// sealed in the same transaction. Returns the minute rows deleted.
    pub(super) fn delete_hot_before(&self, minute: i64) -> Result<usize> {
        self.in_transaction(|| {
            self.conn.execute(
                "INSERT OR IGNORE INTO main.sealed_hours SELECT DISTINCT minute // 60 FROM main.minute_counts
                 WHERE minute < ? AND minute // 60 NOT IN (SELECT hour FROM main.dirty_hours)",
                params![minute],
            )?;
            self.conn.execute(
                "INSERT OR IGNORE INTO main.sealed_hours SELECT DISTINCT minute // 60 FROM main.minute_uniques
                 WHERE minute < ? AND minute // 60 NOT IN (SELECT hour FROM main.dirty_hours)",
                params![minute],
            )?;
            let n = self.conn.execute(
                "DELETE FROM main.minute_counts WHERE minute < ? AND minute // 60 NOT IN (SELECT hour FROM main.dirty_hours)",
                params![minute],
            )?;
            self.conn.execute(
                "DELETE FROM main.minute_uniques WHERE minute < ? AND minute // 60 NOT IN (SELECT hour FROM main.dirty_hours)",
                params![minute],
            )?;
            Ok(n)
        })
    }

    /// Step 1: moves a sealed hour's late minutes into a new batch and marks it clean.
    pub(super) fn stage_late_hour(&self, hour: i64) -> Result<i64> {
        let (lo, hi) = (hour * 60, hour * 60 + 60);
        self.in_transaction(|| {
            let batch: i64 = self.conn.query_row(
                "SELECT coalesce(max(b), 0) + 1 FROM (SELECT batch AS b FROM main.late_batches
                 UNION ALL SELECT batch FROM warm.late_applied)",
                [],
                |r| r.get(0),
            )?;
            self.conn
                .execute("INSERT INTO main.late_batches VALUES (?, ?)", params![batch, hour])?;
            self.conn.execute(
                "INSERT INTO main.late_counts SELECT ?, * FROM main.minute_counts WHERE minute >= ? AND minute < ?",
                params![batch, lo, hi],
            )?;
            self.conn.execute(
                "INSERT INTO main.late_uniques SELECT ?, * FROM main.minute_uniques WHERE minute >= ? AND minute < ?",
                params![batch, lo, hi],
            )?;
            self.conn.execute(
                "DELETE FROM main.minute_counts WHERE minute >= ? AND minute < ?",
                params![lo, hi],
            )?;
            self.conn.execute(
                "DELETE FROM main.minute_uniques WHERE minute >= ? AND minute < ?",
                params![lo, hi],
            )?;
            self.conn
                .execute("DELETE FROM main.dirty_hours WHERE hour = ?", params![hour])?;
            // the hour's published minutes go (warm has it all once the batch is in)
            self.conn
                .execute("INSERT OR IGNORE INTO main.unpublished_hours VALUES (?)", params![hour])?;
            Ok(batch)
        })
    }

    /// Steps 2 and 3 for every staged batch; returns the hours that changed in warm.
    pub(super) fn apply_late_batches(&self) -> Result<Vec<i64>> {
        let mut hours = Vec::new();
        let batches: Vec<(i64, i64)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT batch, hour FROM main.late_batches ORDER BY batch")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<std::result::Result<_, _>>()?
        };
        for (batch, hour) in batches {
            self.apply_late_batch(batch, hour)?;
            self.in_transaction(|| {
                for t in ["late_counts", "late_uniques", "late_batches"] {
                    self.conn
                        .execute(&format!("DELETE FROM main.{t} WHERE batch = ?"), params![batch])?;
                }
                Ok(())
            })?;
            hours.push(hour);
        }
        Ok(hours)
    }

    /// Step 2: adds one batch to its warm hour, once.
    pub(super) fn apply_late_batch(&self, batch: i64, hour: i64) -> Result<()> {
        let done = !self
            .column_i64("SELECT batch FROM warm.late_applied WHERE batch = ?", params![batch])?
            .is_empty();
        if done {
            return Ok(());
        }
        // sketches: the hour's, merged with the batch's (read before the transaction)
        let mut merged = self.merged_sketches(
            "SELECT video, sketch FROM main.late_uniques WHERE batch = ? AND batch = ?",
            batch,
            batch,
        )?;
        let videos: Vec<String> = merged.keys().cloned().collect();
        for (video, sketch) in &mut merged {
            let mut stmt = self
                .conn
                .prepare("SELECT sketch FROM warm.hour_uniques WHERE hour = ? AND video = ?")?;
            let mut rows = stmt.query(params![hour, video])?;
            while let Some(row) = rows.next()? {
                let old: Vec<u8> = row.get(0)?;
                sketch.merge_bytes(&old)?;
            }
        }
        // a marker hour no real hour uses, for the re-aggregation inside warm
        let marker = -1 - hour;
        self.in_transaction(|| {
            self.conn.execute(
                &format!(
                    "INSERT INTO warm.hour_counts SELECT ?::BIGINT, {DIMS}, {SUMS} FROM (
                        SELECT {DIMS}, views, watch_ms, completions, likes, shares, comments FROM warm.hour_counts WHERE hour = ?
                        UNION ALL
                        SELECT {DIMS}, views, watch_ms, completions, likes, shares, comments FROM main.late_counts WHERE batch = ?
                     ) GROUP BY ALL"
                ),
                params![marker, hour, batch],
            )?;
            self.conn
                .execute("DELETE FROM warm.hour_counts WHERE hour = ?", params![hour])?;
            self.conn.execute(
                "UPDATE warm.hour_counts SET hour = ? WHERE hour = ?",
                params![hour, marker],
            )?;
            let mut del = self
                .conn
                .prepare("DELETE FROM warm.hour_uniques WHERE hour = ? AND video = ?")?;
            let mut put = self.conn.prepare("INSERT INTO warm.hour_uniques VALUES (?, ?, ?)")?;
            for video in &videos {
                del.execute(params![hour, video])?;
                put.execute(params![hour, video, merged[video].to_bytes()])?;
            }
            self.conn
                .execute("INSERT INTO warm.late_applied VALUES (?)", params![batch])?;
            Ok(())
        })
    }
}
