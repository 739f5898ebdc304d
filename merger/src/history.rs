//! Generated history, for benchmarks and tests: years of hourly and daily rows for many
//! Zipf-popular videos, written into the cold tier exactly as the merger writes it
//! (`cold/hour/date=D/data.parquet` sorted by video, `cold/day/date=D/data.parquet`
//! sorted by channel and video, and month files of complete months), so that the
//! analytics API and the catalog read it like any other history.

use crate::tiers::{self, DIMS, Retention, TierError, Tiers, date_of_day, sql_str};
use duckdb::Connection;
use std::path::Path;

/// What to generate.
#[derive(Clone, Debug)]
pub struct HistorySpec {
    /// Days of history, ending the day before `end_day`.
    pub days: i64,
    /// First day not generated (days since 1970-01-01), usually today.
    pub end_day: i64,
    /// Distinct videos (`v000000`...), Zipf-popular (log-uniform ranks).
    pub videos: u64,
    /// Channels; video `n` belongs to channel `n % channels` (`ch00000`...).
    pub channels: u64,
    /// Rows per hour (video x country x device x source x POP combinations).
    pub rows_per_hour: u64,
    /// Random seed, in [-1, 1].
    pub seed: f64,
}

/// What was generated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistorySummary {
    /// Days written.
    pub days: i64,
    /// Hourly rows.
    pub hour_rows: u64,
    /// Daily rows.
    pub day_rows: u64,
    /// Views in all rows.
    pub views: u64,
}

const COUNTRIES: &str = "['US','IN','BR','DE','GB','JP','FR','ID','MX','NG','ES','IT','KR','CA','TR']";
const DEVICES: &str = "['mobile','desktop','tablet','tv','other']";
const SOURCES: &str = "['search','suggested','browse','external','direct','notification','other']";
const CATEGORIES: &str = "['music','gaming','news','sports','education','comedy','howto','film']";

/// Writes the history into `dir`'s cold tier (replacing those days' files) and makes
/// sure the tier databases and the catalog exist. `progress` is called after each day.
pub fn generate(
    dir: &Path,
    spec: &HistorySpec,
    mut progress: impl FnMut(i64, &HistorySummary),
) -> Result<HistorySummary, TierError> {
    if spec.days <= 0 || spec.videos == 0 || spec.channels == 0 || spec.rows_per_hour == 0 {
        return Err(TierError::Invalid(
            "days, videos, channels and rows per hour must be positive".into(),
        ));
    }
    // Creates the tier files and the catalog, whose views already glob the cold tier.
    drop(Tiers::open(dir, Retention::default())?);
    let conn = Connection::open_in_memory()?;
    conn.execute_batch(&format!("SELECT setseed({})", spec.seed.clamp(-1.0, 1.0)))?;
    let mut sum = HistorySummary::default();
    for day in spec.end_day - spec.days..spec.end_day {
        let date = date_of_day(day);
        let hour_path = dir.join(format!("cold/hour/date={date}/data.parquet"));
        let day_path = dir.join(format!("cold/day/date={date}/data.parquet"));
        std::fs::create_dir_all(hour_path.parent().unwrap_or(dir))?;
        std::fs::create_dir_all(day_path.parent().unwrap_or(dir))?;
        let ln_videos = (spec.videos as f64).ln();
        // One row per (hour, draw): a log-uniform video rank (Zipf with s = 1), skewed
        // countries, devices and sources; popular videos get more views per row.
        let hours = format!(
            "SELECT epoch_ms(({day}::BIGINT * 24 + h) * 3600000) AS ts,
                    (['fra','iad','sin'])[1 + floor(random() * 3)::INT] AS pop,
                    printf('v%06d', rank) AS video,
                    printf('ch%05d', rank % {channels}) AS channel,
                    ({CATEGORIES})[1 + (rank % 8)::INT] AS category,
                    ({COUNTRIES})[1 + floor(random() * random() * 15)::INT] AS country,
                    ({DEVICES})[1 + floor(random() * random() * 5)::INT] AS device,
                    ({SOURCES})[1 + floor(random() * random() * 7)::INT] AS source,
                    false AS live,
                    greatest(1, round(random() * 400.0 / sqrt(rank + 1)))::UBIGINT AS views
             FROM (SELECT h, greatest(0, least({max_rank}, floor(exp(random() * {ln_videos})) - 1))::BIGINT AS rank
                   FROM range(24) t(h), range({rows}) r(i))",
            channels = spec.channels,
            rows = spec.rows_per_hour,
            max_rank = spec.videos - 1,
        );
        let rows = format!(
            "SELECT ts, {DIMS}, views, views * (20000 + floor(random() * 600000))::UBIGINT AS watch_ms,
                    floor(views * random() * 0.3)::UBIGINT AS completions, floor(views * random() * 0.05)::BIGINT AS likes,
                    floor(views * random() * 0.01)::UBIGINT AS shares, floor(views * random() * 0.005)::UBIGINT AS comments
             FROM ({hours}) ORDER BY video, ts"
        );
        write(&conn, &rows, &hour_path, tiers::COLD_ROW_GROUP)?;
        let hour_file = sql_str(&hour_path.to_string_lossy());
        write(
            &conn,
            &format!(
                "SELECT epoch_ms({day}::BIGINT * 86400000) AS ts, {DIMS}, sum(views)::UBIGINT AS views,
                        sum(watch_ms)::UBIGINT AS watch_ms, sum(completions)::UBIGINT AS completions,
                        sum(likes)::BIGINT AS likes, sum(shares)::UBIGINT AS shares, sum(comments)::UBIGINT AS comments
                 FROM read_parquet({hour_file}) GROUP BY ALL ORDER BY channel, video"
            ),
            &day_path,
            tiers::COLD_ROW_GROUP,
        )?;
        let (h, v): (u64, u64) = conn.query_row(
            &format!("SELECT count(*)::UBIGINT, sum(views)::UBIGINT FROM read_parquet({hour_file})"),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let d: u64 = conn.query_row(
            &format!(
                "SELECT count(*)::UBIGINT FROM read_parquet({})",
                sql_str(&day_path.to_string_lossy())
            ),
            [],
            |r| r.get(0),
        )?;
        sum.days += 1;
        sum.hour_rows += h;
        sum.day_rows += d;
        sum.views += v;
        progress(day, &sum);
    }
    tiers::compact_months(&conn, dir)?;
    Ok(sum)
}

fn write(conn: &Connection, query: &str, path: &Path, row_group: usize) -> Result<(), TierError> {
    let tmp = path.with_extension("parquet.tmp");
    conn.execute_batch(&format!(
        "COPY ({query}) TO {} (FORMAT parquet, ROW_GROUP_SIZE {row_group})",
        sql_str(&tmp.to_string_lossy())
    ))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::{Analytics, Filter, Granularity};

    const DAY: u64 = 86_400_000;

    #[test]
    fn analytics_over_generated_history_adds_up_from_hours_and_from_days() {
        let dir = tempfile::tempdir().unwrap();
        let spec = HistorySpec {
            days: 5,
            end_day: 20_000,
            videos: 40,
            channels: 3,
            rows_per_hour: 30,
            seed: 0.1,
        };
        let mut seen = 0;
        let sum = generate(dir.path(), &spec, |_, _| seen += 1).unwrap();
        assert_eq!((seen, sum.days, sum.hour_rows), (5, 5, 5 * 24 * 30));
        assert!(sum.day_rows < sum.hour_rows && sum.views > sum.hour_rows);
        let (_, videos) =
            crate::tiers::query_catalog(dir.path(), "SELECT count(DISTINCT video) FROM day_views").unwrap();
        let videos: u64 = videos[0][0].parse().unwrap();
        assert!(videos > 20, "Zipf draws cover many of the 40 videos, not {videos}");
        let tiers = Tiers::open(dir.path(), Retention::default()).unwrap();
        let a = Analytics::new(tiers.reader().unwrap(), dir.path());
        let all = Filter {
            eq: vec![],
            from_ms: 19_995 * DAY,
            to_ms: 20_000 * DAY,
            ..Default::default()
        };
        let total = |rows: Vec<crate::analytics::Row>| rows.iter().map(|r| r.views).sum::<u64>();
        // by day: whole days come from the day rollups; by hour: from the hourly files
        let by_day = a.timeseries(&all, Granularity::Day).unwrap();
        assert_eq!(by_day.len(), 5);
        assert_eq!(total(by_day), sum.views);
        assert_eq!(total(a.timeseries(&all, Granularity::Hour).unwrap()), sum.views);
        // a range that cuts days in half reads hours at its edges and days in between
        let part = Filter {
            eq: vec![("channel", "ch00001".into())],
            from_ms: 19_995 * DAY + 7 * 3_600_000,
            to_ms: 19_999 * DAY + 5 * 3_600_000,
            ..Default::default()
        };
        let by_country = total(a.breakdown(&part, "country", 100).unwrap());
        let conn = Connection::open_in_memory().unwrap();
        let glob = sql_str(&format!("{}/cold/hour/*/*.parquet", dir.path().to_string_lossy()));
        let direct: u64 = conn
            .query_row(
                &format!(
                    "SELECT sum(views)::UBIGINT FROM read_parquet({glob}) WHERE channel = 'ch00001'
                     AND ts >= epoch_ms({}::BIGINT) AND ts < epoch_ms({}::BIGINT)",
                    part.from_ms, part.to_ms
                ),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(direct > 0);
        assert_eq!(by_country, direct);
        // analysts see the same history through the catalog
        let (_, rows) = crate::tiers::query_catalog(dir.path(), "SELECT sum(views)::UBIGINT FROM views").unwrap();
        assert_eq!(rows[0][0], sum.views.to_string());
    }

    #[test]
    fn whole_months_are_read_from_month_files_with_the_same_answers() {
        let dir = tempfile::tempdir().unwrap();
        // 2024-08-25 .. 2024-10-03: August (from the 25th) and September are complete
        let spec = HistorySpec {
            days: 40,
            end_day: 20_000,
            videos: 30,
            channels: 4,
            rows_per_hour: 4,
            seed: 0.3,
        };
        let sum = generate(dir.path(), &spec, |_, _| {}).unwrap();
        let mut months: Vec<String> = std::fs::read_dir(dir.path().join("cold/month"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        months.sort();
        assert_eq!(months, vec!["month=2024-08", "month=2024-09"]);
        // a second pass writes nothing new
        let conn = Connection::open_in_memory().unwrap();
        assert_eq!(tiers::compact_months(&conn, dir.path()).unwrap(), 0);

        let tiers = Tiers::open(dir.path(), Retention::default()).unwrap();
        let a = Analytics::new(tiers.reader().unwrap(), dir.path());
        let all = Filter {
            eq: vec![],
            from_ms: 19_960 * DAY,
            to_ms: 20_000 * DAY,
            ..Default::default()
        };
        let channel = Filter {
            eq: vec![("channel", "ch00002".into())],
            ..all.clone()
        };
        let answers = |a: &Analytics| {
            (
                a.timeseries(&all, Granularity::Day).unwrap(),
                a.timeseries(&channel, Granularity::Day).unwrap(),
                a.breakdown(&channel, "country", 100).unwrap(),
            )
        };
        let with_months = answers(&a);
        assert_eq!(with_months.0.len(), 40);
        assert_eq!(with_months.0.iter().map(|r| r.views).sum::<u64>(), sum.views);
        assert!(with_months.1.iter().map(|r| r.views).sum::<u64>() > 0);
        // the same answers from the day files alone
        std::fs::remove_dir_all(dir.path().join("cold/month")).unwrap();
        assert_eq!(answers(&a), with_months);
        // month days and names
        assert_eq!(tiers::month_days("2024-02"), Some((19_754, 19_783)));
        assert_eq!(tiers::month_days("2024-12").map(|(a, b)| b - a), Some(31));
        assert_eq!(tiers::month_days("2024-13"), None);
    }
}
