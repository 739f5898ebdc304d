//! Publishing for analysts: the hours and days that changed since the last publish are
//! exported as Parquet under `published/`, and `catalog.duckdb` defines views over
//! `published/` and `cold/` (one `views` view over all of history), since the merger
//! holds the DuckDB files open for writing.

use super::sql::sql_str;
use super::{DIMS, MEASURES, Result, Tiers};
use duckdb::{Connection, params};

impl Tiers {
    /// Exports the hours and days that changed since the last publish as Parquet under
    /// `published/`, which the catalog's views read. Returns how many files were written.
    pub fn publish(&mut self) -> Result<usize> {
        let hours = self.column_i64("SELECT hour FROM main.unpublished_hours ORDER BY hour", [])?;
        let days = self.column_i64("SELECT day FROM main.unpublished_days ORDER BY day", [])?;
        for &h in &hours {
            // an hour of minutes
            self.export_published(
                ("main.minute_counts", "main.minute_uniques", "minute", 60_000),
                h * 60,
                h * 60 + 60,
                ("minute", format!("hour={h}")),
            )?;
            self.conn
                .execute("DELETE FROM main.unpublished_hours WHERE hour = ?", params![h])?;
        }
        for &d in &days {
            // a day of hours
            self.export_published(
                ("warm.hour_counts", "warm.hour_uniques", "hour", 3_600_000),
                d * 24,
                d * 24 + 24,
                ("hour", format!("day={d}")),
            )?;
            self.conn
                .execute("DELETE FROM main.unpublished_days WHERE day = ?", params![d])?;
        }
        Ok(2 * (hours.len() + days.len()))
    }

    /// Exports rows `[lo, hi)` of a counts table and its sketches table (`time` column in
    /// units of `unit_ms`) to `published/<name>/<part>/` and `published/<name>_uniques/<part>/`.
    pub(super) fn export_published(
        &self,
        (counts, uniques, time, unit_ms): (&str, &str, &str, i64),
        lo: i64,
        hi: i64,
        (name, part): (&str, String),
    ) -> Result<()> {
        self.copy_parquet(
            &format!("SELECT epoch_ms({time} * {unit_ms}) AS ts, {DIMS}, {MEASURES} FROM {counts} WHERE {time} >= {lo} AND {time} < {hi}"),
            &self.dir.join(format!("published/{name}/{part}/data.parquet")),
        )?;
        self.copy_parquet(
            &format!("SELECT epoch_ms({time} * {unit_ms}) AS ts, video, sketch FROM {uniques} WHERE {time} >= {lo} AND {time} < {hi}"),
            &self.dir.join(format!("published/{name}_uniques/{part}/data.parquet")),
        )
    }

    /// Writes `catalog.duckdb`: views over published and cold Parquet. Empty placeholder
    /// files keep the globs valid before any data exists.
    pub(super) fn write_catalog(&self) -> Result<()> {
        let empty_counts = format!(
            "SELECT epoch_ms(0) AS ts, ''::VARCHAR AS pop, ''::VARCHAR AS video, ''::VARCHAR AS channel, ''::VARCHAR AS category,
               ''::VARCHAR AS country, ''::VARCHAR AS device, ''::VARCHAR AS source, false AS live, 0::UBIGINT AS views,
               0::UBIGINT AS watch_ms, 0::UBIGINT AS completions, 0::BIGINT AS likes, 0::UBIGINT AS shares, 0::UBIGINT AS comments
             WHERE false"
        );
        let empty_uniques = "SELECT epoch_ms(0) AS ts, ''::VARCHAR AS video, ''::BLOB AS sketch WHERE false";
        for (sub, q) in [
            ("published/minute", empty_counts.as_str()),
            ("published/hour", empty_counts.as_str()),
            ("cold/hour", empty_counts.as_str()),
            ("cold/day", empty_counts.as_str()),
            ("published/minute_uniques", empty_uniques),
            ("published/hour_uniques", empty_uniques),
            ("cold/day_uniques", empty_uniques),
        ] {
            let p = self.dir.join(sub).join("empty/data.parquet");
            if !p.exists() {
                self.copy_parquet(q, &p)?;
            }
        }
        let d = |sub: &str| sql_str(&format!("{}/*/*.parquet", self.dir.join(sub).to_string_lossy()));
        let tmp = self.dir.join("catalog.duckdb.tmp");
        let _ = std::fs::remove_file(&tmp);
        let cat = Connection::open(&tmp)?;
        cat.execute_batch(&format!(
            "CREATE VIEW minute_views AS SELECT * FROM read_parquet({m});
             CREATE VIEW hour_views AS SELECT * FROM read_parquet({h});
             CREATE VIEW cold_hour_views AS SELECT * FROM read_parquet({ch});
             CREATE VIEW day_views AS SELECT * FROM read_parquet({cd});
             CREATE VIEW views AS
               WITH minute_hours AS (SELECT DISTINCT date_trunc('hour', ts) AS h FROM minute_views),
                    warm_hours AS (SELECT DISTINCT ts AS h FROM hour_views)
               SELECT 'minute' AS grain, * FROM minute_views
               UNION ALL SELECT 'hour' AS grain, * FROM hour_views WHERE ts NOT IN (SELECT h FROM minute_hours)
               UNION ALL SELECT 'hour' AS grain, * FROM cold_hour_views
                 WHERE ts NOT IN (SELECT h FROM minute_hours) AND ts NOT IN (SELECT h FROM warm_hours);
             CREATE VIEW minute_uniques AS SELECT * FROM read_parquet({mu});
             CREATE VIEW hour_uniques AS SELECT * FROM read_parquet({hu});
             CREATE VIEW day_uniques AS SELECT * FROM read_parquet({du});",
            m = d("published/minute"),
            h = d("published/hour"),
            ch = d("cold/hour"),
            cd = d("cold/day"),
            mu = d("published/minute_uniques"),
            hu = d("published/hour_uniques"),
            du = d("cold/day_uniques"),
        ))?;
        drop(cat);
        std::fs::rename(&tmp, self.dir.join("catalog.duckdb"))?;
        let _ = std::fs::remove_file(self.dir.join("catalog.duckdb.tmp.wal"));
        Ok(())
    }
}
