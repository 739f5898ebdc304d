//! Civil dates without a date crate: day numbers (days since 1970-01-01) to and from
//! `YYYY-MM-DD`, months, and the date partitions of the Parquet tiers.

use std::collections::BTreeSet;
use std::path::Path;

/// `YYYY-MM-DD` of a day number (days since 1970-01-01).
pub fn date_of_day(day: i64) -> String {
    // civil-from-days (Howard Hinnant), so no date crate is needed for directory names
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{:04}-{:02}-{:02}", if m <= 2 { y + 1 } else { y }, m, d)
}

/// The day number of a `YYYY-MM-DD` date (the inverse of [`date_of_day`]).
pub fn day_of_date(date: &str) -> Option<i64> {
    let mut it = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (it.next()??, it.next()??, it.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // days-from-civil (Howard Hinnant)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The days of the `date=YYYY-MM-DD` partitions under `dir/sub` (e.g. `cold/day`).
pub fn partition_days(dir: &Path, sub: &str) -> BTreeSet<i64> {
    let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| day_of_date(e.file_name().to_str()?.strip_prefix("date=")?))
        .collect()
}

/// The first day of month `YYYY-MM` and the first day of the month after it.
pub fn month_days(month: &str) -> Option<(i64, i64)> {
    let (y, m) = month.split_once('-')?;
    let (y, m): (i64, i64) = (y.parse().ok()?, m.parse().ok()?);
    if month.len() != 7 || !(1..=12).contains(&m) {
        return None;
    }
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    Some((
        day_of_date(&format!("{month}-01"))?,
        day_of_date(&format!("{ny:04}-{nm:02}-01"))?,
    ))
}
