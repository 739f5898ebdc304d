//! The append-only log of accepted frames: the merger's source of truth.
//!
//! Segment files `log/<n>.seg` hold records `[len: u32 LE][crc32: u32 LE][frame bytes]`.
//! A frame is acknowledged only after the record is written and `fsync`ed; concurrent
//! frames share one `fsync` (group commit). On start the log is replayed; a torn record at
//! the tail (a crash mid-write, never acknowledged) is cut off.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Segments are rotated past this size.
const SEGMENT_BYTES: u64 = 64 << 20;
const HEADER: usize = 8;
/// No frame is larger than this.
pub const MAX_RECORD: usize = 64 << 20;

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
    file: File,
    path: PathBuf,
    segment: u64,
    len: u64,
}

/// Where a record ends in the log: (segment number, byte offset after the record).
/// Positions grow with every append, so they order records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct LogPos {
    /// Segment number.
    pub segment: u64,
    /// Offset just past the record.
    pub offset: u64,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:08}.seg"))
}

fn segments(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads every intact record of one segment; returns the records and the byte length
/// of the intact prefix.
fn read_segment(path: &Path, segment: u64) -> Result<(Vec<(LogPos, Vec<u8>)>, u64), LogError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut r = BufReader::new(file);
    let mut out = Vec::new();
    let mut good = 0u64;
    loop {
        let mut head = [0u8; HEADER];
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io_err(path)(e)),
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_RECORD {
            break;
        }
        let mut buf = vec![0u8; len];
        match r.read_exact(&mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io_err(path)(e)),
        }
        if crc32fast::hash(&buf) != crc {
            break;
        }
        good += (HEADER + len) as u64;
        out.push((LogPos { segment, offset: good }, buf));
    }
    Ok((out, good))
}

impl FrameLog {
    /// Opens (creating if needed) the log in `dir` and returns it with every intact record,
    /// oldest first. A torn tail is truncated.
    pub fn open(dir: &Path) -> Result<(FrameLog, Vec<(LogPos, Vec<u8>)>), LogError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let segs = segments(dir)?;
        let mut records = Vec::new();
        let mut last = (1, 0);
        for &n in &segs {
            let path = segment_path(dir, n);
            let (recs, good) = read_segment(&path, n)?;
            records.extend(recs);
            last = (n, good);
        }
        let (segment, len) = last;
        let path = segment_path(dir, segment);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        file.set_len(len).map_err(io_err(&path))?;
        file.seek(SeekFrom::Start(len)).map_err(io_err(&path))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
        Ok((
            FrameLog {
                dir: dir.to_owned(),
                file,
                path,
                segment,
                len,
            },
            records,
        ))
    }

    /// Appends a record (not yet durable: call [`FrameLog::sync`]); returns where it ends.
    pub fn append(&mut self, frame: &[u8]) -> Result<LogPos, LogError> {
        if self.len >= SEGMENT_BYTES {
            self.rotate()?;
        }
        let mut rec = Vec::with_capacity(HEADER + frame.len());
        rec.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        rec.extend_from_slice(&crc32fast::hash(frame).to_le_bytes());
        rec.extend_from_slice(frame);
        self.file.write_all(&rec).map_err(io_err(&self.path))?;
        self.len += rec.len() as u64;
        Ok(LogPos {
            segment: self.segment,
            offset: self.len,
        })
    }

    /// Makes everything appended so far durable.
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.file.sync_data().map_err(io_err(&self.path))
    }

    fn rotate(&mut self) -> Result<(), LogError> {
        self.sync()?;
        self.segment += 1;
        self.path = segment_path(&self.dir, self.segment);
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        self.len = 0;
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
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
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
    fn corrupt_record_ends_replay() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = FrameLog::open(dir.path()).unwrap();
            log.append(b"good").unwrap();
            log.append(b"flipped").unwrap();
            log.sync().unwrap();
        }
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        fs::write(&seg, bytes).unwrap();
        let (_, recs) = FrameLog::open(dir.path()).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].1, b"good");
    }
}
