//! The append-only log of accepted frames: the merger's source of truth.
//!
//! Segment files `log/<n>.seg` hold records of the shared format of `tally-records`
//! (`[len: u32 LE][crc32: u32 LE][frame bytes]`). A frame is acknowledged only after the
//! record is written and `fsync`ed; concurrent frames share one `fsync` (group commit).
//! A failed write or `fsync` cuts the segment back to its last good length, so no
//! acknowledged record ever follows a partial one; if even that fails the log refuses
//! every further frame (edges keep them and resend).
//!
//! On start the log is replayed. A torn record at the tail of the last segment (a crash
//! mid-write, never acknowledged) is cut off. Damage anywhere else (intact records after
//! it, or a bad tail in an older segment) is never cut: the intact records on both sides
//! are replayed, the damage is logged and counted ([`FrameLog::damaged`]), and appends
//! go to a new segment.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use tally_records::{Appender, WriteError};

/// Segments are rotated past this size.
const SEGMENT_BYTES: u64 = 64 << 20;
/// No frame is larger than this.
pub const MAX_RECORD: usize = tally_records::MAX_RECORD;

/// Errors of the frame log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file system refused.
    #[error("frame log I/O in {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A write or sync failed.
    #[error("frame log: {0}")]
    Write(#[from] WriteError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The writer end of the log.
pub struct FrameLog {
    dir: PathBuf,
    out: Appender,
    segment: u64,
    damaged: usize,
    segment_bytes: u64,
}

/// Where a record ends in the log: (segment number, byte offset after the record).
/// Positions grow with every append, so they order records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize)]
pub struct LogPos {
    /// Segment number.
    pub segment: u64,
    /// Offset just past the record.
    pub offset: u64,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:08}.seg"))
}

/// The files in `dir` whose names end in `suffix`, as (name without it, path); none when
/// `dir` does not exist.
pub(crate) fn files_ending(dir: &Path, suffix: &str) -> io::Result<Vec<(String, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if let Some(stem) = entry.file_name().to_str().and_then(|n| n.strip_suffix(suffix)) {
            out.push((stem.to_owned(), entry.path()));
        }
    }
    Ok(out)
}

fn segments(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut out: Vec<u64> = files_ending(dir, ".seg")
        .map_err(io_err(dir))?
        .into_iter()
        .filter_map(|(stem, _)| stem.parse().ok())
        .collect();
    out.sort_unstable();
    Ok(out)
}

impl FrameLog {
    /// Opens (creating if needed) the log in `dir` and returns it with every intact record,
    /// oldest first. Only a torn tail of the last segment is cut. (Reads the whole log
    /// into memory: for tools and tests; the merger replays with [`FrameLog::replay`].)
    pub fn open(dir: &Path) -> Result<(FrameLog, Vec<(LogPos, Vec<u8>)>), LogError> {
        let mut records = Vec::new();
        let log = FrameLog::replay(dir, None, |pos, bytes| records.push((pos, bytes)))?;
        Ok((log, records))
    }

    /// Opens (creating if needed) the log in `dir`, handing every intact record after
    /// `after` to `each`, oldest first, one segment in memory at a time. Segments wholly
    /// before `after` are not read. Only a torn tail of the last segment is cut.
    pub fn replay(
        dir: &Path,
        after: Option<LogPos>,
        mut each: impl FnMut(LogPos, Vec<u8>),
    ) -> Result<FrameLog, LogError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let segs = segments(dir)?;
        let mut damaged = 0;
        let mut reopen = None;
        for (i, &n) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            if !last && after.is_some_and(|a| n < a.segment) {
                continue;
            }
            let path = segment_path(dir, n);
            let scan = tally_records::scan_file(&path).map_err(io_err(&path))?;
            for (from, to) in &scan.damaged {
                tracing::error!(segment = %path.display(), from, to, "damaged region in the frame log; the intact records around it are kept");
            }
            damaged += scan.damaged.len();
            if let Some(at) = scan.torn_tail
                && !last
            {
                tracing::error!(segment = %path.display(), at, "an older frame log segment ends in damage; kept as it is");
                damaged += 1;
            }
            if last && scan.damaged.is_empty() {
                reopen = Some((n, scan.valid_len));
            }
            for r in scan.records {
                let pos = LogPos {
                    segment: n,
                    offset: r.end,
                };
                if after.is_none_or(|a| pos > a) {
                    each(pos, r.payload);
                }
            }
        }
        // Appends must land after the checkpoint: a log that ends before it (segments
        // lost) continues in a fresh segment past it.
        let behind = |n: u64, len: u64| {
            after.is_some_and(|a| {
                LogPos {
                    segment: n,
                    offset: len,
                } < a
            })
        };
        if let Some((n, len)) = reopen
            && behind(n, len)
        {
            tracing::error!(
                segment = n,
                "the frame log ends before the checkpoint; appending to a new segment"
            );
            damaged += 1;
            reopen = None;
        }
        let (segment, out) = match reopen {
            Some((n, valid_len)) => {
                let path = segment_path(dir, n);
                (n, Appender::open(&path, valid_len).map_err(io_err(&path))?)
            }
            None => {
                // no segment yet, or the last one is damaged: append to a fresh one
                let n = segs.last().map_or(1, |l| l + 1).max(after.map_or(0, |a| a.segment + 1));
                let path = segment_path(dir, n);
                (n, Appender::create(&path).map_err(io_err(&path))?)
            }
        };
        Ok(FrameLog {
            dir: dir.to_owned(),
            out,
            segment,
            damaged,
            segment_bytes: SEGMENT_BYTES,
        })
    }

    /// Rotates segments past `bytes` instead of the default 64 MiB (compaction frees
    /// whole segments).
    pub fn with_segment_bytes(mut self, bytes: u64) -> FrameLog {
        self.segment_bytes = bytes.max(1);
        self
    }

    /// The oldest segment on disk (1 for a log that was never compacted).
    pub fn first_segment(dir: &Path) -> Result<Option<u64>, LogError> {
        Ok(segments(dir)?.first().copied())
    }

    /// Deletes the segments before `segment` (never the one being written); returns how
    /// many bytes went.
    pub fn delete_before(dir: &Path, segment: u64) -> Result<u64, LogError> {
        let mut freed = 0;
        for n in segments(dir)? {
            if n >= segment {
                break;
            }
            let path = segment_path(dir, n);
            freed += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        if freed > 0 {
            fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
        }
        Ok(freed)
    }

    /// The segment being written.
    pub fn segment(&self) -> u64 {
        self.segment
    }

    /// Damaged regions found when the log was opened.
    pub fn damaged(&self) -> usize {
        self.damaged
    }

    /// Whether an unrecoverable write failure stopped the log.
    pub fn is_broken(&self) -> bool {
        self.out.is_broken()
    }

    /// Appends records in one write (not yet durable: call [`FrameLog::sync`]); returns
    /// where each ends. On failure nothing of them stays in the file.
    pub fn append_all(&mut self, frames: &[&[u8]]) -> Result<Vec<LogPos>, LogError> {
        if self.out.len() >= self.segment_bytes {
            self.rotate()?;
        }
        let segment = self.segment;
        Ok(self
            .out
            .append(frames)?
            .into_iter()
            .map(|offset| LogPos { segment, offset })
            .collect())
    }

    /// Appends one record (see [`FrameLog::append_all`]).
    pub fn append(&mut self, frame: &[u8]) -> Result<LogPos, LogError> {
        let mut p = self.append_all(&[frame])?;
        p.pop().ok_or_else(|| LogError::Write(WriteError::Size(0)))
    }

    /// Makes everything appended so far durable; on failure, what was appended since the
    /// last sync is gone from the file (and must not be acknowledged).
    pub fn sync(&mut self) -> Result<(), LogError> {
        Ok(self.out.sync()?)
    }

    fn rotate(&mut self) -> Result<(), LogError> {
        self.sync()?;
        let next = self.segment + 1;
        let path = segment_path(&self.dir, next);
        self.out = Appender::create(&path).map_err(io_err(&path))?;
        self.segment = next;
        Ok(())
    }

    /// Bytes in all segments.
    pub fn total_bytes(&self) -> u64 {
        segments(&self.dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|&n| fs::metadata(segment_path(&self.dir, n)).ok())
            .map(|m| m.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, recs) = FrameLog::open(dir.path()).unwrap();
            assert!(recs.is_empty());
            log.append(b"one").unwrap();
            log.append(b"two").unwrap();
            log.sync().unwrap();
        }
        // simulate a crash in the middle of writing a third record
        let seg = segment_path(dir.path(), 1);
        let mut f = fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let (mut log, recs) = FrameLog::open(dir.path()).unwrap();
        let bodies: Vec<Vec<u8>> = recs.iter().map(|r| r.1.clone()).collect();
        assert_eq!(bodies, vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(recs[0].0 < recs[1].0);
        log.append(b"three").unwrap();
        log.sync().unwrap();
        drop(log);
        let (_, recs) = FrameLog::open(dir.path()).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[2].1, b"three");
    }

    #[test]
    fn damage_in_the_middle_keeps_the_records_after_it_and_appends_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = FrameLog::open(dir.path()).unwrap();
            log.append(b"good").unwrap();
            log.append(b"flipped").unwrap();
            log.append(b"after").unwrap();
            log.sync().unwrap();
        }
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        bytes[8 + 4 + 8 + 2] ^= 1; // inside "flipped"
        fs::write(&seg, &bytes).unwrap();
        let (mut log, recs) = FrameLog::open(dir.path()).unwrap();
        let bodies: Vec<&[u8]> = recs.iter().map(|r| r.1.as_slice()).collect();
        assert_eq!(
            bodies,
            vec![&b"good"[..], b"after"],
            "the record after the damage is kept"
        );
        assert_eq!(log.damaged(), 1);
        assert_eq!(fs::read(&seg).unwrap(), bytes, "the damaged segment is not cut");
        log.append(b"new").unwrap();
        log.sync().unwrap();
        drop(log);
        let (_, recs) = FrameLog::open(dir.path()).unwrap();
        assert_eq!(recs.last().unwrap().1, b"new");
        assert_eq!(recs.last().unwrap().0.segment, 2, "appends went to a fresh segment");
    }

    #[test]
    fn zero_length_records_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = FrameLog::open(dir.path()).unwrap();
        assert!(log.append(b"").is_err());
    }
}
