//! SQL helpers shared by the tier jobs: literals, the dimension and measure lists, the
//! saturating upsert, and atomic Parquet exports.

use super::{Result, Tiers};
use std::path::Path;

pub(crate) const DIMS: &str = "pop, video, channel, category, country, device, source, live";
pub(crate) const MEASURES: &str = "views, watch_ms, completions, likes, shares, comments";

/// A SQL string literal.
pub(crate) fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The upsert's `SET` list: every measure added in 128-bit arithmetic and clamped to its
/// column's range, so no frame can make the upsert overflow (and stop the tiers).
pub(super) fn saturating_sums() -> String {
    const U64_MAX: &str = "18446744073709551615";
    let unsigned = ["views", "watch_ms", "completions", "shares", "comments"]
        .map(|c| format!("{c} = least({c}::HUGEINT + EXCLUDED.{c}::HUGEINT, {U64_MAX}::HUGEINT)::UBIGINT"));
    format!(
        "{}, likes = greatest(least(likes::HUGEINT + EXCLUDED.likes::HUGEINT, {}::HUGEINT), {}::HUGEINT)::BIGINT",
        unsigned.join(", "),
        i64::MAX,
        i64::MIN
    )
}

impl Tiers {
    /// Writes `query` to `path` as Parquet, atomically (temp file, then rename).
    pub(super) fn copy_parquet(&self, query: &str, path: &Path) -> Result<()> {
        self.copy_parquet_opts(query, path, "")
    }

    /// Like [`Tiers::copy_parquet`] with extra `COPY` options (`, NAME value`...).
    pub(super) fn copy_parquet_opts(&self, query: &str, path: &Path, opts: &str) -> Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension("parquet.tmp");
        self.conn.execute_batch(&format!(
            "COPY ({query}) TO {} (FORMAT parquet{opts})",
            sql_str(&tmp.to_string_lossy())
        ))?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}
