//! Batch commits: applied frames accumulate in memory (counter rows summed per minute
//! key, sketches merged per minute and video, bot counts per minute and POP) and are
//! written to the hot tier in one transaction that also records the log position they
//! cover, so a crash between commits replays exactly what the tiers lack.

use super::sql::saturating_sums;
use super::{DIMS, MEASURES, Result, RowKey, Tiers};
use crate::log::LogPos;
use duckdb::params;
use std::collections::BTreeSet;
use tally_delta::DeltaFrame;

impl Tiers {
    /// Adds an applied frame (at log position `pos`) to the pending batch.
    pub fn add(&mut self, pos: LogPos, frame: &DeltaFrame) -> Result<()> {
        let pop = &frame.header.pop_id;
        for r in &frame.counters {
            let key = RowKey {
                minute: r.minute as i64,
                pop: pop.clone(),
                video: frame.str(r.video).to_owned(),
                channel: frame.str(r.channel).to_owned(),
                category: frame.str(r.category).to_owned(),
                country: r.country.to_string(),
                device: r.device.as_str(),
                source: r.source.as_str(),
                live: r.live,
            };
            self.counts.entry(key).or_default().add(&r.counts);
        }
        for u in &frame.uniques {
            self.uniques
                .entry((u.minute as i64, frame.str(u.video).to_owned()))
                .or_default()
                .merge_bytes(&u.sketch)?;
        }
        if frame.intake.bots > 0 {
            let minute = (frame.header.interval_end_ms / 60_000) as i64;
            let n = self.bots.entry((minute, pop.clone())).or_default();
            *n = n.saturating_add(frame.intake.bots);
        }
        self.pending_pos = Some(self.pending_pos.map_or(pos, |p| p.max(pos)));
        Ok(())
    }

    /// Frames added but not committed.
    pub fn has_pending(&self) -> bool {
        self.pending_pos.is_some()
    }

    /// Writes the pending batch in one transaction together with its log position.
    pub fn commit(&mut self) -> Result<()> {
        let Some(pos) = self.pending_pos else { return Ok(()) };
        let counts = std::mem::take(&mut self.counts);
        let uniques = std::mem::take(&mut self.uniques);
        let bots = std::mem::take(&mut self.bots);
        let mut hours = BTreeSet::new();
        let result = self.in_transaction(|| {
            if !bots.is_empty() {
                let mut stmt = self.conn.prepare(
                    "INSERT INTO main.minute_bots VALUES (?, ?, ?)
                     ON CONFLICT DO UPDATE SET events = minute_bots.events + excluded.events",
                )?;
                for ((minute, pop), n) in &bots {
                    stmt.execute(params![minute, pop, n])?;
                }
            }
            self.conn.execute_batch("DELETE FROM main.staging")?;
            {
                let mut app = self.conn.appender("staging")?;
                for (k, c) in &counts {
                    hours.insert(k.minute.div_euclid(60));
                    app.append_row(params![
                        k.minute,
                        k.pop,
                        k.video,
                        k.channel,
                        k.category,
                        k.country,
                        k.device,
                        k.source,
                        k.live,
                        c.views,
                        c.watch_ms,
                        c.completions,
                        c.likes,
                        c.shares,
                        c.comments
                    ])?;
                }
                app.flush()?;
            }
            self.conn.execute_batch(&format!(
                "INSERT INTO main.minute_counts SELECT minute, {DIMS}, {MEASURES} FROM main.staging
                 ON CONFLICT DO UPDATE SET {}",
                saturating_sums()
            ))?;
            // Sketches: the stored ones of this batch's (minute, video) keys are read in
            // one join and merged here, and all are written back in one statement (not
            // a point query and an insert per key, which made the tiers fall far behind
            // after an outage).
            self.conn
                .execute_batch("DELETE FROM main.uniques_keys; DELETE FROM main.uniques_staging")?;
            {
                let mut app = self.conn.appender("uniques_keys")?;
                for (minute, video) in uniques.keys() {
                    hours.insert(minute.div_euclid(60));
                    app.append_row(params![minute, video])?;
                }
                app.flush()?;
            }
            let mut merged = uniques.clone();
            {
                let mut stmt = self.conn.prepare(
                    "SELECT u.minute, u.video, u.sketch FROM main.minute_uniques u
                     JOIN main.uniques_keys k ON u.minute = k.minute AND u.video = k.video",
                )?;
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    let key: (i64, String) = (row.get(0)?, row.get(1)?);
                    let old: Vec<u8> = row.get(2)?;
                    if let Some(s) = merged.get_mut(&key) {
                        s.merge_bytes(&old)?;
                    }
                }
            }
            {
                let mut app = self.conn.appender("uniques_staging")?;
                for ((minute, video), sketch) in &merged {
                    app.append_row(params![minute, video, sketch.to_bytes()])?;
                }
                app.flush()?;
            }
            self.conn
                .execute_batch("INSERT OR REPLACE INTO main.minute_uniques SELECT * FROM main.uniques_staging")?;
            let mut dirty = self.conn.prepare("INSERT OR IGNORE INTO main.dirty_hours VALUES (?)")?;
            let mut unpublished = self
                .conn
                .prepare("INSERT OR IGNORE INTO main.unpublished_hours VALUES (?)")?;
            for h in &hours {
                dirty.execute(params![h])?;
                unpublished.execute(params![h])?;
            }
            self.conn.execute(
                "INSERT OR REPLACE INTO main.watermark VALUES (1, ?, ?)",
                params![pos.segment, pos.offset],
            )?;
            Ok(())
        });
        match result {
            Ok(()) => {
                self.pending_pos = None;
                *self.committed.lock().unwrap_or_else(|p| p.into_inner()) = Some(pos);
                Ok(())
            }
            Err(e) => {
                // The transaction rolled back: the batch is put back, so a retry writes it
                // whole (frames added meanwhile add to it).
                for (k, c) in counts {
                    self.counts.entry(k).or_default().add(&c);
                }
                for (k, s) in uniques {
                    self.uniques.entry(k).or_default().merge(&s);
                }
                for (k, n) in bots {
                    *self.bots.entry(k).or_default() += n;
                }
                Err(e)
            }
        }
    }
}
