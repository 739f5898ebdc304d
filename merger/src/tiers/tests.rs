//! The tiers against real DuckDB files in a temporary directory.

use super::*;
use crate::log::LogPos;
use tally_delta::DeltaFrame;
use tally_delta::{CounterRow, Country, Device, EdgeCounts, FrameHeader, FrameId, Source, UniqueRow};

const NOW: u64 = 1_795_000_000_000;

#[test]
fn dates_and_day_numbers_round_trip() {
    assert_eq!(date_of_day(0), "1970-01-01");
    assert_eq!(day_of_date("1970-01-01"), Some(0));
    assert_eq!(day_of_date("2024-02-29"), Some(19_782));
    for day in (-800..30_000).step_by(7) {
        assert_eq!(day_of_date(&date_of_day(day)), Some(day), "day {day}");
    }
    assert_eq!(day_of_date("2024-13-01"), None);
    assert_eq!(day_of_date("nope"), None);
}

fn frame(seq: u64, minute: u32, video: &str, views: u64, viewer: u64) -> DeltaFrame {
    let mut sketch = UniqueSketch::new();
    sketch.insert(viewer);
    DeltaFrame {
        header: FrameHeader {
            id: FrameId {
                edge_id: "e".into(),
                epoch: 1,
                seq,
            },
            pop_id: "fra".into(),
            interval_start_ms: 0,
            interval_end_ms: 0,
        },
        strings: vec![video.into(), "c".into(), "music".into()],
        counters: vec![CounterRow {
            minute,
            video: 0,
            channel: 1,
            category: 2,
            country: Country(*b"DE"),
            device: Device::Tv,
            source: Source::Direct,
            live: false,
            counts: Counts {
                views,
                watch_ms: views.saturating_mul(1000),
                ..Counts::default()
            },
            facts: None,
        }],
        uniques: vec![UniqueRow {
            minute,
            video: 0,
            sketch: sketch.to_bytes(),
        }],
        live: vec![],
        live_beats: vec![],
        intake: EdgeCounts::default(),
    }
}

fn pos(n: u64) -> LogPos {
    LogPos {
        segment: 1,
        offset: n * 100,
    }
}

fn one(t: &Tiers, sql: &str) -> i64 {
    t.conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn commits_are_additive_and_carry_their_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let m = (NOW / 60_000) as u32 - 30;
    {
        let mut t = Tiers::open(dir.path(), Retention::default()).unwrap();
        t.add(pos(1), &frame(1, m, "v", 2, 1)).unwrap();
        t.add(pos(2), &frame(2, m, "v", 3, 2)).unwrap();
        t.commit().unwrap();
        assert_eq!(t.watermark().unwrap(), Some(pos(2)));
        // added but never committed: a crash loses it from the tiers, not from the log
        t.add(pos(3), &frame(3, m, "v", 100, 3)).unwrap();
    }
    let mut t = Tiers::open(dir.path(), Retention::default()).unwrap();
    assert_eq!(t.watermark().unwrap(), Some(pos(2)));
    assert_eq!(one(&t, "select sum(views)::BIGINT from minute_counts"), 5);
    // replay from the watermark: frame 3 lands once
    t.add(pos(3), &frame(3, m, "v", 100, 3)).unwrap();
    t.commit().unwrap();
    assert_eq!(one(&t, "select sum(views)::BIGINT from minute_counts"), 105);
    assert_eq!(one(&t, "select count(*) from minute_counts"), 1);
    let sketch: Vec<u8> = t
        .conn
        .query_row("select sketch from minute_uniques", [], |r| r.get(0))
        .unwrap();
    assert_eq!(UniqueSketch::from_bytes(&sketch).unwrap().estimate().round() as i64, 3);
}

#[test]
fn upserts_saturate_instead_of_overflowing() {
    let dir = tempfile::tempdir().unwrap();
    let m = (NOW / 60_000) as u32 - 30;
    let mut t = Tiers::open(dir.path(), Retention::default()).unwrap();
    let mut huge = frame(1, m, "v", u64::MAX - 1, 1);
    huge.counters[0].counts.watch_ms = u64::MAX;
    huge.counters[0].counts.likes = i64::MAX;
    t.add(pos(1), &huge).unwrap();
    t.commit().unwrap();
    let mut more = frame(2, m, "v", 5, 2);
    more.counters[0].counts.likes = 7;
    t.add(pos(2), &more).unwrap();
    t.commit().expect("an overflowing upsert saturates");
    let (views, likes): (String, i64) = t
        .conn
        .query_row("select views::VARCHAR, likes from minute_counts", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((views, likes), (u64::MAX.to_string(), i64::MAX));
}

#[test]
fn rollup_replaces_hours_so_reruns_and_late_minutes_never_double_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tiers::open(dir.path(), Retention::default()).unwrap();
    let m = (NOW / 3_600_000 * 60) as u32 - 120; // two hours ago, on the hour
    t.add(pos(1), &frame(1, m, "v", 2, 1)).unwrap();
    t.add(pos(2), &frame(2, m + 59, "v", 3, 2)).unwrap();
    t.add(pos(3), &frame(3, m + 60, "v", 7, 3)).unwrap();
    t.commit().unwrap();
    assert_eq!(t.rollup(NOW).unwrap().hours, 2);
    assert_eq!(t.rollup(NOW).unwrap().hours, 0, "nothing dirty, nothing redone");
    // a crash between writing warm and clearing the mark: the hour is simply redone
    t.conn
        .execute("insert into main.dirty_hours values (?)", params![(m / 60) as i64])
        .unwrap();
    t.rollup(NOW).unwrap();
    let hour = |t: &Tiers, h: u32| {
        one(
            t,
            &format!(
                "select coalesce(sum(views), 0)::BIGINT from warm.hour_counts where hour = {}",
                h / 60
            ),
        )
    };
    assert_eq!((hour(&t, m), hour(&t, m + 60)), (5, 7));
    // a late event for the first hour updates its minute and the hour again
    t.add(pos(4), &frame(4, m + 5, "v", 1, 9)).unwrap();
    t.commit().unwrap();
    t.rollup(NOW).unwrap();
    assert_eq!(hour(&t, m), 6);
    let sketch: Vec<u8> = t
        .conn
        .query_row(
            "select sketch from warm.hour_uniques where hour = ?",
            params![(m / 60) as i64],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(UniqueSketch::from_bytes(&sketch).unwrap().estimate().round() as i64, 3);
}

#[test]
fn old_days_move_to_cold_and_retention_keeps_each_hour_somewhere() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tiers::open(dir.path(), Retention::default()).unwrap();
    let day = (NOW / 86_400_000) as u32;
    let old = (day - 200) * 1440 + 23 * 60 + 59; // 23:59, 200 days ago
    let recent = (day - 3) * 1440 + 10;
    t.add(pos(1), &frame(1, old, "v", 4, 1)).unwrap();
    t.add(pos(2), &frame(2, old + 2, "v", 6, 2)).unwrap(); // 00:01 the next day
    t.add(pos(3), &frame(3, recent, "w", 1, 3)).unwrap();
    t.commit().unwrap();
    let r = t.rollup(NOW).unwrap();
    assert_eq!(r.cold_days, 3, "{r:?}");
    assert!(r.hot_deleted >= 2 && r.warm_deleted >= 2, "{r:?}");
    t.publish().unwrap();
    let (_, rows) = query_catalog(
        dir.path(),
        "select grain, sum(views)::BIGINT from views group by 1 order by 1",
    )
    .unwrap();
    assert_eq!(
        rows,
        vec![
            vec!["hour".to_string(), "10".into()],
            vec!["minute".to_string(), "1".into()]
        ]
    );
    let (_, rows) = query_catalog(dir.path(), "select count(*) from day_views").unwrap();
    assert_eq!(rows[0][0], "3");
}

#[test]
fn late_rows_for_a_day_already_in_cold_reach_its_day_and_month_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tiers::open(dir.path(), Retention::default()).unwrap();
    let day = (NOW / 86_400_000) as u32;
    // three days ago, in a month before this one when NOW allows it
    let old = (day - 3) * 1440 + 60;
    t.add(pos(1), &frame(1, old, "v", 4, 1)).unwrap();
    t.commit().unwrap();
    assert_eq!(t.rollup(NOW).unwrap().cold_days, 1);
    let date = date_of_day(i64::from(day - 3));
    let cold_sum = |t: &Tiers| -> i64 {
        let path = dir.path().join(format!("cold/day/date={date}/data.parquet"));
        t.conn
            .query_row(
                &format!(
                    "select sum(views)::BIGINT from read_parquet({})",
                    sql_str(&path.to_string_lossy())
                ),
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(cold_sum(&t), 4);
    // an edge that was offline delivers rows of that day now
    t.add(pos(2), &frame(2, old + 30, "v", 3, 2)).unwrap();
    t.commit().unwrap();
    let r = t.rollup(NOW).unwrap();
    assert_eq!((r.cold_days, r.cold_redone), (1, 1), "{r:?}");
    assert_eq!(cold_sum(&t), 7, "the day file has the late rows");
    // and a second rollup changes nothing
    assert_eq!(t.rollup(NOW).unwrap().cold_days, 0);
    t.publish().unwrap();
    let (_, rows) = query_catalog(dir.path(), "select sum(views)::BIGINT from day_views").unwrap();
    assert_eq!(rows[0][0], "7");
}

#[test]
fn rows_more_than_a_week_late_add_to_their_warm_hour_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let day = (NOW / 86_400_000) as u32;
    // ten days ago: older than hot's 7 days, inside warm's 90
    let old = (day - 10) * 1440 + 120;
    let hour = i64::from(old / 60);
    let warm_views = |t: &Tiers| {
        one(
            t,
            &format!("select sum(views)::BIGINT from warm.hour_counts where hour = {hour}"),
        )
    };
    let warm_rows = |t: &Tiers| one(t, &format!("select count(*) from warm.hour_counts where hour = {hour}"));
    {
        let mut t = Tiers::open(dir.path(), Retention::default()).unwrap();
        t.add(pos(1), &frame(1, old, "v", 4, 1)).unwrap();
        t.commit().unwrap();
        let r = t.rollup(NOW).unwrap();
        assert!(r.hot_deleted >= 1, "hot retention deleted the hour's minutes: {r:?}");
        assert_eq!(warm_views(&t), 4);
        // an edge offline for ten days delivers more of that hour
        t.add(pos(2), &frame(2, old + 5, "v", 3, 2)).unwrap();
        t.commit().unwrap();
        let r = t.rollup(NOW).unwrap();
        assert_eq!(r.late_hours, 1, "{r:?}");
        assert_eq!(warm_views(&t), 7, "added to the hour, not replacing it");
        assert_eq!(warm_rows(&t), 1, "one row per dimension after re-aggregation");
        // a crash after warm took a batch but before hot dropped it
        t.add(pos(3), &frame(3, old + 6, "v", 2, 3)).unwrap();
        t.commit().unwrap();
        let batch = t.stage_late_hour(hour).unwrap();
        t.apply_late_batch(batch, hour).unwrap();
        assert_eq!(warm_views(&t), 9);
    }
    let mut t = Tiers::open(dir.path(), Retention::default()).unwrap();
    t.rollup(NOW).unwrap();
    assert_eq!(warm_views(&t), 9, "the batch warm recorded is not added twice");
    assert_eq!(one(&t, "select count(*) from main.late_batches"), 0);
    // and the cold day and the catalog agree
    t.publish().unwrap();
    let date = date_of_day(i64::from(day - 10));
    let (_, rows) = query_catalog(
        dir.path(),
        &format!("select sum(views)::BIGINT from day_views where ts::DATE = DATE '{date}'"),
    )
    .unwrap();
    assert_eq!(rows[0][0], "9");
    let (_, rows) = query_catalog(
        dir.path(),
        &format!("select sum(views)::BIGINT from views where ts::DATE = DATE '{date}'"),
    )
    .unwrap();
    assert_eq!(rows[0][0], "9");
    let sketch: Vec<u8> = t
        .conn
        .query_row(
            &format!("select sketch from warm.hour_uniques where hour = {hour} and video = 'v'"),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(UniqueSketch::from_bytes(&sketch).unwrap().estimate().round(), 3.0);
}

#[test]
fn civil_dates() {
    assert_eq!(date_of_day(0), "1970-01-01");
    assert_eq!(date_of_day(20_415), "2025-11-23");
    assert_eq!(date_of_day(11_016), "2000-02-29");
}
