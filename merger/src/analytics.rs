//! Analytics over the tiers, straight from the merger's own DuckDB database (fresher than
//! the published catalog): each hour is read once, from minutes where hot has them, else
//! from warm hours, else from cold Parquet.

use crate::tiers::{date_of_day, month_days, partition_days};
use duckdb::Connection;
use duckdb::types::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Dimensions one can filter and group by.
pub const DIMENSIONS: [&str; 7] = ["video", "channel", "category", "country", "device", "source", "pop"];

/// Filters and range of an analytics query.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// `(dimension, value)` equality filters; dimensions from [`DIMENSIONS`].
    pub eq: Vec<(&'static str, String)>,
    /// `(dimension, values)`: the dimension is one of the values.
    pub any: Vec<(&'static str, Vec<String>)>,
    /// `(dimension, values)`: the dimension is none of the values.
    pub not: Vec<(&'static str, Vec<String>)>,
    /// Start, ms since the Unix epoch (inclusive).
    pub from_ms: u64,
    /// End, ms since the Unix epoch (exclusive).
    pub to_ms: u64,
    /// Videos left out of every answer (blocked ones: not in channel or country sums
    /// either).
    pub exclude_videos: Vec<String>,
}

/// Bucket size of a time series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// Minutes (only where the hot tier still has them; older ranges come in hours).
    Minute,
    /// Hours.
    Hour,
    /// Days.
    Day,
}

impl Granularity {
    /// Parses `minute`, `hour`, `day`.
    pub fn parse(s: &str) -> Option<Granularity> {
        Some(match s {
            "minute" => Granularity::Minute,
            "hour" => Granularity::Hour,
            "day" => Granularity::Day,
            _ => return None,
        })
    }

    /// The finest grain that keeps a range to a few hundred points.
    pub fn for_range(ms: u64) -> Granularity {
        if ms <= 6 * 3_600_000 {
            Granularity::Minute
        } else if ms <= 14 * 86_400_000 {
            Granularity::Hour
        } else {
            Granularity::Day
        }
    }

    /// The spelling used in the API and in `date_trunc`.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }
}

/// One row of a result: a label (bucket time or dimension value) and the measures.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Row {
    /// Bucket start (ms) for time series, dimension value for breakdowns.
    #[schema(value_type = Object)]
    pub key: serde_json::Value,
    /// Views.
    pub views: u64,
    /// Watch time in seconds.
    pub watch_time_s: u64,
    /// Completions.
    pub completions: u64,
    /// Likes net of unlikes.
    pub likes: i64,
    /// Shares.
    pub shares: u64,
    /// Comments.
    pub comments: u64,
}

/// Read connections to the merger's tiers (clones of the tier writer's database): a
/// small pool, so a slow query holds one connection, not every reader.
pub struct Analytics {
    conns: Vec<Mutex<Connection>>,
    next: std::sync::atomic::AtomicUsize,
    dir: PathBuf,
}

/// Connections in the pool (the HTTP layer lets as many queries run at once).
pub const READERS: usize = 4;

fn to_u64(v: &Value) -> u64 {
    match v {
        Value::UBigInt(n) => *n,
        Value::BigInt(n) => (*n).max(0) as u64,
        Value::HugeInt(n) => (*n).clamp(0, u64::MAX as i128) as u64,
        Value::Int(n) => (*n).max(0) as u64,
        _ => 0,
    }
}

fn to_i64(v: &Value) -> i64 {
    match v {
        Value::BigInt(n) => *n,
        Value::HugeInt(n) => (*n).clamp(i64::MIN as i128, i64::MAX as i128) as i64,
        Value::UBigInt(n) => (*n).min(i64::MAX as u64) as i64,
        Value::Int(n) => *n as i64,
        _ => 0,
    }
}

/// Appends `AND video NOT IN (...)` for the filter's excluded videos (bound parameters).
fn exclude_videos(f: &Filter, sql: &mut String, args: &mut Vec<Value>) {
    if !f.exclude_videos.is_empty() {
        let marks = vec!["?"; f.exclude_videos.len()].join(", ");
        sql.push_str(&format!(" AND video NOT IN ({marks})"));
        args.extend(f.exclude_videos.iter().cloned().map(Value::Text));
    }
}

/// A DuckDB list of file paths.
fn paths(files: impl Iterator<Item = PathBuf>) -> String {
    let quoted: Vec<String> = files
        .map(|p| format!("'{}'", p.to_string_lossy().replace('\'', "''")))
        .collect();
    format!("[{}]", quoted.join(", "))
}

impl Analytics {
    /// Wraps a connection to the tier database; `dir` is the data directory.
    pub fn new(conn: Connection, dir: &Path) -> Analytics {
        // Parquet footers are read once and cached, not at every query.
        if let Err(e) = conn.execute_batch("SET enable_object_cache = true") {
            tracing::warn!(error = %e, "cannot enable DuckDB's Parquet metadata cache");
        }
        let mut conns = Vec::with_capacity(READERS);
        for _ in 1..READERS {
            match conn.try_clone() {
                Ok(c) => conns.push(Mutex::new(c)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open another analytics connection");
                    break;
                }
            }
        }
        conns.push(Mutex::new(conn));
        Analytics {
            conns,
            next: Default::default(),
            dir: dir.to_owned(),
        }
    }

    /// Runs `f` on a free connection of the pool (waiting for one if none is free),
    /// handing `on_start` the connection's interrupt handle first, so a caller can stop
    /// a query that runs too long.
    pub fn with_conn<T>(
        &self,
        on_start: impl FnOnce(std::sync::Arc<duckdb::InterruptHandle>),
        f: impl FnOnce(&Connection) -> T,
    ) -> T {
        let free = self.conns.iter().find_map(|c| c.try_lock().ok());
        let conn = match free {
            Some(c) => c,
            None => {
                let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.conns.len();
                self.conns[i].lock().unwrap_or_else(|p| p.into_inner())
            }
        };
        on_start(conn.interrupt_handle());
        f(&conn)
    }

    /// Days present in a cold sub-directory (`cold/hour`, `cold/day`) within `[lo, hi]`.
    fn cold_days(&self, sub: &str, lo: i64, hi: i64) -> BTreeSet<i64> {
        partition_days(&self.dir, sub).range(lo..=hi).copied().collect()
    }

    fn file_list(&self, sub: &str, days: &BTreeSet<i64>) -> String {
        paths(
            days.iter()
                .map(|d| self.dir.join(format!("{sub}/date={}/data.parquet", date_of_day(*d)))),
        )
    }

    /// Month files (`cold/month/month=YYYY-MM`) as (first day, first day after, path).
    fn cold_months(&self) -> Vec<(i64, i64, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("cold/month")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let (first, next) = month_days(e.file_name().to_str()?.strip_prefix("month=")?)?;
                let path = e.path().join("data.parquet");
                path.exists().then_some((first, next, path))
            })
            .collect()
    }

    /// The first hour hot or warm still hold (cold alone holds what is older).
    fn live_tiers_start_hour(&self, conn: &Connection) -> Result<i64, duckdb::Error> {
        let (w, m): (Option<i64>, Option<i64>) = conn.query_row(
            "SELECT (SELECT min(hour) FROM warm.hour_counts), (SELECT min(minute) FROM main.minute_counts)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok([w, m.map(|m| m.div_euclid(60))]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(i64::MAX))
    }

    /// The rows of every tier in the range, each hour once, with the filters applied.
    /// Cold data is read from the files of the days in the range only, and, when
    /// `whole_days` allows it and no video is asked for, from day rollups for days that
    /// lie wholly in the range and are older than anything hot or warm hold (from month
    /// files for whole months).
    fn source(&self, conn: &Connection, f: &Filter, whole_days: bool) -> Result<(String, Vec<Value>), duckdb::Error> {
        let (lo_m, hi_m) = ((f.from_ms / 60_000) as i64, f.to_ms.div_ceil(60_000) as i64);
        let (lo_h, hi_h) = (lo_m.div_euclid(60), (hi_m + 59).div_euclid(60));
        let (lo_d, hi_d) = (lo_h.div_euclid(24), (hi_h - 1).div_euclid(24));
        let mut hour_days = self.cold_days("cold/hour", lo_d, hi_d);
        let mut day_days = BTreeSet::new();
        let mut months: Vec<(i64, i64, PathBuf)> = Vec::new();
        // Day files are sorted by channel, hour files by video: a video's rows are found
        // fastest in the hour files.
        let whole_days = whole_days && !f.eq.iter().any(|(d, _)| *d == "video");
        if whole_days {
            let live_start = self.live_tiers_start_hour(conn)?;
            let day_ms = 86_400_000u64;
            day_days = self
                .cold_days("cold/day", lo_d, hi_d)
                .into_iter()
                .filter(|d| {
                    let (start, end) = (*d as u64 * day_ms, (*d as u64 + 1) * day_ms);
                    start >= f.from_ms && end <= f.to_ms && (*d + 1) * 24 <= live_start
                })
                .collect();
            // Whole months in range come from their month file: one file, not thirty.
            months = self
                .cold_months()
                .into_iter()
                .filter(|(first, next, _)| {
                    *first as u64 * day_ms >= f.from_ms && *next as u64 * day_ms <= f.to_ms && next * 24 <= live_start
                })
                .collect();
            let in_month = |d: &i64| months.iter().any(|(first, next, _)| (*first..*next).contains(d));
            day_days.retain(|d| !in_month(d));
            hour_days.retain(|d| !day_days.contains(d) && !in_month(d));
        }
        let cols = "pop, video, channel, category, country, device, source, views, watch_ms, completions, likes, shares, comments";
        let mut cold = Vec::new();
        if !hour_days.is_empty() {
            cold.push(format!(
                "SELECT ts, {cols} FROM read_parquet({files})
                 WHERE ts >= epoch_ms({lo_h}::BIGINT * 3600000) AND ts < epoch_ms({hi_h}::BIGINT * 3600000)
                   AND epoch_ms(ts) // 3600000 NOT IN (SELECT h FROM mh) AND epoch_ms(ts) // 3600000 NOT IN (SELECT h FROM wh)",
                files = self.file_list("cold/hour", &hour_days)
            ));
        }
        if !day_days.is_empty() {
            cold.push(format!(
                "SELECT ts, {cols} FROM read_parquet({files})",
                files = self.file_list("cold/day", &day_days)
            ));
        }
        if !months.is_empty() {
            cold.push(format!(
                "SELECT ts, {cols} FROM read_parquet({files})",
                files = paths(months.into_iter().map(|(_, _, p)| p))
            ));
        }
        if cold.is_empty() {
            cold.push(format!("SELECT ts, {cols} FROM m WHERE false"));
        }
        let mut sql = format!(
            "WITH m AS (SELECT epoch_ms(minute * 60000) AS ts, {cols} FROM main.minute_counts WHERE minute >= {lo_m} AND minute < {hi_m}),
                  mh AS (SELECT DISTINCT minute // 60 AS h FROM main.minute_counts WHERE minute >= {lo_h}::BIGINT * 60 AND minute < {hi_h}::BIGINT * 60),
                  w AS (SELECT epoch_ms(hour * 3600000) AS ts, {cols} FROM warm.hour_counts
                        WHERE hour >= {lo_h} AND hour < {hi_h} AND hour NOT IN (SELECT h FROM mh)),
                  wh AS (SELECT DISTINCT hour AS h FROM warm.hour_counts WHERE hour >= {lo_h} AND hour < {hi_h}),
                  c AS ({cold}),
                  src AS (SELECT * FROM m UNION ALL SELECT * FROM w UNION ALL SELECT * FROM c)
             SELECT * FROM src WHERE ts >= epoch_ms(?::BIGINT) AND ts < epoch_ms(?::BIGINT)",
            cold = cold.join(" UNION ALL ")
        );
        let mut args = vec![Value::BigInt(f.from_ms as i64), Value::BigInt(f.to_ms as i64)];
        for (dim, val) in &f.eq {
            // dimension names come from DIMENSIONS only; values are bound parameters
            sql.push_str(&format!(" AND {dim} = ?"));
            args.push(Value::Text(val.clone()));
        }
        for (op, list) in [("IN", &f.any), ("NOT IN", &f.not)] {
            for (dim, vals) in list {
                let marks = vec!["?"; vals.len()].join(", ");
                sql.push_str(&format!(" AND {dim} {op} ({marks})"));
                args.extend(vals.iter().map(|v| Value::Text(v.clone())));
            }
        }
        exclude_videos(f, &mut sql, &mut args);
        Ok((sql, args))
    }

    fn run(conn: &Connection, sql: &str, args: Vec<Value>, key_is_time: bool) -> Result<Vec<Row>, duckdb::Error> {
        let mut stmt = conn.prepare(sql)?;
        let mut rows = stmt.query(duckdb::params_from_iter(args))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let key: Value = r.get(0)?;
            let key = match (&key, key_is_time) {
                (Value::BigInt(ms), true) => serde_json::json!(ms),
                (Value::Text(s), false) => serde_json::json!(s),
                (other, _) => serde_json::json!(format!("{other:?}")),
            };
            let m: Vec<Value> = (1..7).map(|i| r.get(i)).collect::<Result<_, _>>()?;
            out.push(Row {
                key,
                views: to_u64(&m[0]),
                watch_time_s: to_u64(&m[1]) / 1000,
                completions: to_u64(&m[2]),
                likes: to_i64(&m[3]),
                shares: to_u64(&m[4]),
                comments: to_u64(&m[5]),
            });
        }
        Ok(out)
    }

    /// Measures per time bucket.
    pub fn timeseries(&self, f: &Filter, g: Granularity) -> Result<Vec<Row>, duckdb::Error> {
        self.with_conn(|_| {}, |c| self.timeseries_on(c, f, g))
    }

    /// Measures per value of one dimension, most viewed first.
    pub fn breakdown(&self, f: &Filter, by: &'static str, limit: usize) -> Result<Vec<Row>, duckdb::Error> {
        self.with_conn(|_| {}, |c| self.breakdown_on(c, f, by, limit))
    }

    /// Distinct viewers over `[from, to)`, of one video or of all (`f.eq` may name a
    /// `video`; other dimensions are not kept with the sketches): the union of every
    /// stored sketch that overlaps the range, minutes from hot, hours from warm, days
    /// from cold. A union is idempotent, so where tiers overlap nobody counts twice; the
    /// range is rounded out to the grain each tier keeps. Returns (estimate, sketches
    /// merged).
    pub fn uniques_on(&self, conn: &Connection, f: &Filter) -> Result<(f64, usize), duckdb::Error> {
        let video = f.eq.iter().find(|(d, _)| *d == "video").map(|(_, v)| v.clone());
        let (sql, args) = self.sketches_sql(f, video.as_slice());
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query(duckdb::params_from_iter(args))?;
        let mut all = tally_delta::UniqueSketch::new();
        let mut n = 0;
        while let Some(r) = rows.next()? {
            let bytes: Vec<u8> = r.get(1)?;
            // sketches were validated before they were stored; an unreadable one is skipped
            if all.merge_bytes(&bytes).is_ok() {
                n += 1;
            }
        }
        Ok((all.estimate(), n))
    }

    /// Distinct viewers of each of `videos` over the filter's range (the union of each
    /// video's stored sketches, as [`Analytics::uniques_on`]).
    pub fn uniques_per_video_on(
        &self,
        conn: &Connection,
        f: &Filter,
        videos: &[String],
    ) -> Result<HashMap<String, f64>, duckdb::Error> {
        if videos.is_empty() {
            return Ok(HashMap::new());
        }
        let (sql, args) = self.sketches_sql(f, videos);
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query(duckdb::params_from_iter(args))?;
        let mut per: HashMap<String, tally_delta::UniqueSketch> = HashMap::new();
        while let Some(r) = rows.next()? {
            let video: String = r.get(0)?;
            let bytes: Vec<u8> = r.get(1)?;
            let _ = per.entry(video).or_default().merge_bytes(&bytes);
        }
        Ok(per.into_iter().map(|(v, s)| (v, s.estimate())).collect())
    }

    /// `(video, sketch)` of every stored sketch overlapping the range (minutes from hot,
    /// hours from warm, days from cold), of `videos` only unless empty.
    fn sketches_sql(&self, f: &Filter, videos: &[String]) -> (String, Vec<Value>) {
        let (lo_m, hi_m) = ((f.from_ms / 60_000) as i64, f.to_ms.div_ceil(60_000) as i64);
        let (lo_h, hi_h) = (lo_m.div_euclid(60), (hi_m + 59).div_euclid(60));
        let (lo_d, hi_d) = (lo_h.div_euclid(24), (hi_h + 23).div_euclid(24));
        let mut parts = vec![
            format!("SELECT video, sketch FROM main.minute_uniques WHERE minute >= {lo_m} AND minute < {hi_m}"),
            format!("SELECT video, sketch FROM warm.hour_uniques WHERE hour >= {lo_h} AND hour < {hi_h}"),
        ];
        let days = self.cold_days("cold/day_uniques", lo_d, hi_d - 1);
        if !days.is_empty() {
            let files = days.iter().map(|d| {
                self.dir.join(format!(
                    "cold/day_uniques/date={}/data.parquet",
                    crate::tiers::date_of_day(*d)
                ))
            });
            parts.push(format!("SELECT video, sketch FROM read_parquet({})", paths(files)));
        }
        let mut sql = format!("SELECT video, sketch FROM ({}) WHERE true", parts.join(" UNION ALL "));
        let mut args = Vec::new();
        if !videos.is_empty() {
            sql.push_str(&format!(" AND video IN ({})", vec!["?"; videos.len()].join(", ")));
            args.extend(videos.iter().map(|v| Value::Text(v.clone())));
        }
        exclude_videos(f, &mut sql, &mut args);
        (sql, args)
    }

    /// Events refused as bots in the filter's range: totals by POP, and per minute.
    #[allow(clippy::type_complexity)]
    pub fn bots_on(&self, conn: &Connection, f: &Filter) -> Result<(Vec<(String, u64)>, Vec<(i64, u64)>), duckdb::Error> {
        let (lo, hi) = ((f.from_ms / 60_000) as i64, f.to_ms.div_ceil(60_000) as i64);
        let mut stmt = conn.prepare(
            "SELECT pop, sum(events)::UBIGINT FROM main.minute_bots WHERE minute >= ? AND minute < ? GROUP BY 1 ORDER BY 2 DESC, 1",
        )?;
        let by_pop = stmt
            .query_map(duckdb::params![lo, hi], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut stmt = conn.prepare(
            "SELECT minute, sum(events)::UBIGINT FROM main.minute_bots WHERE minute >= ? AND minute < ? GROUP BY 1 ORDER BY 1",
        )?;
        let series = stmt
            .query_map(duckdb::params![lo, hi], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok((by_pop, series))
    }

    /// [`Analytics::timeseries`] on a connection of the pool (see [`Analytics::with_conn`]).
    pub fn timeseries_on(&self, conn: &Connection, f: &Filter, g: Granularity) -> Result<Vec<Row>, duckdb::Error> {
        let (src, args) = self.source(conn, f, g == Granularity::Day)?;
        let sql = format!(
            "SELECT epoch_ms(date_trunc('{g}', ts)) AS bucket, sum(views)::UBIGINT, sum(watch_ms)::UBIGINT, sum(completions)::UBIGINT,
                    sum(likes)::BIGINT, sum(shares)::UBIGINT, sum(comments)::UBIGINT
             FROM ({src}) GROUP BY 1 ORDER BY 1",
            g = g.as_str()
        );
        Self::run(conn, &sql, args, true)
    }

    /// [`Analytics::breakdown`] on a connection of the pool.
    pub fn breakdown_on(
        &self,
        conn: &Connection,
        f: &Filter,
        by: &'static str,
        limit: usize,
    ) -> Result<Vec<Row>, duckdb::Error> {
        self.breakdown_page_on(conn, f, by, limit, 0)
    }

    /// [`Analytics::breakdown_on`] from the `offset`th row (pagination).
    pub fn breakdown_page_on(
        &self,
        conn: &Connection,
        f: &Filter,
        by: &'static str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<Row>, duckdb::Error> {
        let (src, args) = self.source(conn, f, true)?;
        let sql = format!(
            "SELECT {by}, sum(views)::UBIGINT AS v, sum(watch_ms)::UBIGINT, sum(completions)::UBIGINT, sum(likes)::BIGINT,
                    sum(shares)::UBIGINT, sum(comments)::UBIGINT
             FROM ({src}) GROUP BY 1 ORDER BY v DESC, 1 LIMIT {limit} OFFSET {offset}"
        );
        Self::run(conn, &sql, args, false)
    }

    /// Totals over the filter's range (one row, key `"total"`).
    pub fn totals_on(&self, conn: &Connection, f: &Filter) -> Result<Row, duckdb::Error> {
        let (src, args) = self.source(conn, f, true)?;
        let sql = format!(
            "SELECT 'total', coalesce(sum(views), 0)::UBIGINT, coalesce(sum(watch_ms), 0)::UBIGINT, coalesce(sum(completions), 0)::UBIGINT,
                    coalesce(sum(likes), 0)::BIGINT, coalesce(sum(shares), 0)::UBIGINT, coalesce(sum(comments), 0)::UBIGINT
             FROM ({src})"
        );
        let mut rows = Self::run(conn, &sql, args, false)?;
        Ok(rows.pop().unwrap_or(Row {
            key: serde_json::json!("total"),
            views: 0,
            watch_time_s: 0,
            completions: 0,
            likes: 0,
            shares: 0,
            comments: 0,
        }))
    }
}
