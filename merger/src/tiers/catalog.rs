//! Read-only SQL over the catalog (`tally query`), with values printed as text.

use super::calendar::date_of_day;
use super::{Result, TierError};
use duckdb::Connection;
use std::path::Path;

/// Runs a read-only SQL query over the catalog; returns column names and rows as text.
pub fn query_catalog(dir: &Path, sql: &str) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    let cfg = duckdb::Config::default().access_mode(duckdb::AccessMode::ReadOnly)?;
    let conn = Connection::open_with_flags(dir.join("catalog.duckdb"), cfg)?;
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query([])?;
    let stmt_ref = rows
        .as_ref()
        .ok_or_else(|| TierError::Io(std::io::Error::other("query has no result")))?;
    let names: Vec<String> = stmt_ref.column_names();
    let n = names.len();
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut cells = Vec::with_capacity(n);
        for i in 0..n {
            let v: duckdb::types::Value = row.get(i)?;
            cells.push(format_value(&v));
        }
        out.push(cells);
    }
    Ok((names, out))
}

fn format_value(v: &duckdb::types::Value) -> String {
    use duckdb::types::Value as V;
    match v {
        V::Null => "NULL".into(),
        V::Text(s) => s.clone(),
        V::Blob(b) => format!("<{} bytes>", b.len()),
        V::Timestamp(unit, n) => {
            let micros = match unit {
                duckdb::types::TimeUnit::Second => n * 1_000_000,
                duckdb::types::TimeUnit::Millisecond => n * 1_000,
                duckdb::types::TimeUnit::Microsecond => *n,
                duckdb::types::TimeUnit::Nanosecond => n / 1_000,
            };
            let secs = micros.div_euclid(1_000_000);
            let (day, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
            format!(
                "{} {:02}:{:02}:{:02}",
                date_of_day(day),
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            )
        }
        other => {
            let s = format!("{other:?}");
            // Debug of numbers is `BigInt(5)`: keep what is inside the parentheses
            match (s.find('('), s.rfind(')')) {
                (Some(a), Some(b)) if b > a => s[a + 1..b].to_string(),
                _ => s,
            }
        }
    }
}
