//! Blocked videos, kept durably in `data/blocked.json` (written whole, by temp file,
//! fsync and rename, before a block or unblock is answered), so a block survives a
//! merger restart.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

/// Reads the blocked videos; none when the file does not exist.
pub fn load(path: &Path) -> std::io::Result<BTreeSet<String>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(e),
    }
}

/// Replaces the file with `videos`, durably.
pub fn save(path: &Path, videos: &BTreeSet<String>) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(videos).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("blocked.json");
        assert!(load(&p).unwrap().is_empty());
        let set: BTreeSet<String> = ["v1".to_string(), "v 2".to_string()].into();
        save(&p, &set).unwrap();
        assert_eq!(load(&p).unwrap(), set);
        std::fs::write(&p, b"{not json").unwrap();
        assert!(load(&p).is_err());
    }
}
