//! `tally query`: SQL over all of history (the catalog), printed as a table.

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub(crate) struct QueryArgs {
    /// The SQL, e.g. "select video, sum(views) from views group by video order by 2 desc limit 10".
    sql: String,
    /// The merger's data directory.
    #[arg(long, default_value = "data")]
    data_dir: std::path::PathBuf,
}

pub(crate) fn run(a: QueryArgs) -> Result<()> {
    if !a.data_dir.join("catalog.duckdb").exists() {
        bail!(
            "no catalog at {}: point --data-dir at a merger's data directory",
            a.data_dir.join("catalog.duckdb").display()
        );
    }
    let (names, rows) = tally_merger::tiers::query_catalog(&a.data_dir, &a.sql)?;
    let mut widths: Vec<usize> = names.iter().map(|n| n.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    println!("{}", line(&names));
    println!(
        "{}",
        widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-")
    );
    for r in &rows {
        println!("{}", line(r));
    }
    eprintln!("({} rows)", rows.len());
    Ok(())
}
