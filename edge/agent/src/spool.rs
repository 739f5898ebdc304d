//! The durable spool: frames wait here, on disk, until every merger acknowledged them.
//!
//! Append-only segment files `<n>.spool` of the records of `tally-records`
//! (`[len u32][crc32 u32][frame]`); one fsync per append (all frames of a flush
//! together), and a failed append leaves nothing of itself in the file. A segment is
//! deleted once all of its frames are acknowledged. On open, every intact frame still on
//! disk is handed back to be resent (mergers drop the ones they already have), also
//! those after a damaged region; only a torn tail is cut off.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tally_records::{Appender, WriteError};

/// A segment is closed once it is this large.
const SEGMENT_BYTES: u64 = 4 << 20;
const HEADER: u64 = tally_records::HEADER as u64;
/// Largest frame a spool holds.
pub const MAX_FRAME: u32 = tally_records::MAX_RECORD as u32;

/// Where a frame is in the spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Segment number.
    pub segment: u64,
    /// Offset of the frame's header in the segment.
    pub offset: u64,
    /// Frame length.
    pub len: u32,
}

/// Spool failures.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The configured bound would be exceeded.
    #[error("spool is full: {bytes} bytes held, {max} allowed; the mergers are not acknowledging frames")]
    Full {
        /// Bytes held.
        bytes: u64,
        /// Bound.
        max: u64,
    },
    /// The disk failed.
    #[error("spool I/O on {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// Writing frames failed (nothing of them stays in the spool).
    #[error("spool: {0}")]
    Write(#[from] WriteError),
}

struct Inner {
    current: Appender,
    segment: u64,
    segment_len: u64,
    /// Unacknowledged frames per segment.
    live: BTreeMap<u64, usize>,
    /// File size per segment.
    sizes: BTreeMap<u64, u64>,
}

/// The spool of one agent.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    inner: Mutex<Inner>,
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |e| SpoolError::Io(p.to_path_buf(), e)
}

impl Spool {
    /// Opens the spool in `dir`, returning the frames it still holds, oldest first.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Spool, Vec<(Entry, Vec<u8>)>), SpoolError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut segments: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".spool")?.parse().ok())
            .collect();
        segments.sort_unstable();
        let mut held = Vec::new();
        let mut live = BTreeMap::new();
        let mut sizes = BTreeMap::new();
        for &seg in &segments {
            let path = segment_path(dir, seg);
            let scan = tally_records::scan_file(&path).map_err(io(&path))?;
            for (from, to) in &scan.damaged {
                tracing::error!(segment = %path.display(), from, to, "damaged region in the spool; resending the intact frames around it");
            }
            if scan.records.is_empty() && scan.damaged.is_empty() {
                std::fs::remove_file(&path).map_err(io(&path))?;
                continue;
            }
            let mut size = std::fs::metadata(&path).map_err(io(&path))?.len();
            if scan.torn_tail.is_some() && scan.damaged.is_empty() {
                tracing::warn!(segment = %path.display(), "spool segment has a torn tail; cutting it off");
                let f = OpenOptions::new().write(true).open(&path).map_err(io(&path))?;
                f.set_len(scan.valid_len).map_err(io(&path))?;
                f.sync_all().map_err(io(&path))?;
                size = scan.valid_len;
            }
            live.insert(seg, scan.records.len());
            sizes.insert(seg, size);
            held.extend(scan.records.into_iter().map(|r| {
                (
                    Entry {
                        segment: seg,
                        offset: r.offset,
                        len: r.payload.len() as u32,
                    },
                    r.payload,
                )
            }));
        }
        let segment = segments.last().map_or(0, |s| s + 1);
        let current = create_segment(dir, segment)?;
        sizes.insert(segment, 0);
        live.insert(segment, 0);
        let spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            inner: Mutex::new(Inner {
                current,
                segment,
                segment_len: 0,
                live,
                sizes,
            }),
        };
        Ok((spool, held))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends frames and makes them durable (one fsync); refuses when full.
    pub fn append<P: AsRef<[u8]>>(&self, frames: &[P]) -> Result<Vec<Entry>, SpoolError> {
        let mut g = self.lock();
        let fully_acked = g.live.get(&g.segment).copied() == Some(0);
        if g.segment_len >= SEGMENT_BYTES || (fully_acked && g.segment_len > 0) {
            self.roll(&mut g)?;
        }
        let adding: u64 = frames.iter().map(|f| f.as_ref().len() as u64 + HEADER).sum();
        let held: u64 = g.sizes.values().sum();
        if held + adding > self.max_bytes {
            return Err(SpoolError::Full {
                bytes: held,
                max: self.max_bytes,
            });
        }
        // Whatever part of a failed append reached the file is cut off again, so the
        // spool stays whole.
        let ends = g.current.append_durable(frames)?;
        let seg = g.segment;
        let entries: Vec<Entry> = ends
            .iter()
            .zip(frames)
            .map(|(end, f)| Entry {
                segment: seg,
                offset: end - f.as_ref().len() as u64 - HEADER,
                len: f.as_ref().len() as u32,
            })
            .collect();
        g.segment_len = g.current.len();
        *g.sizes.entry(seg).or_default() += adding;
        *g.live.entry(seg).or_default() += frames.len();
        Ok(entries)
    }

    fn roll(&self, g: &mut Inner) -> Result<(), SpoolError> {
        let old = g.segment;
        let next = old + 1;
        g.current = create_segment(&self.dir, next)?;
        g.segment = next;
        g.segment_len = 0;
        g.sizes.insert(next, 0);
        g.live.insert(next, 0);
        if g.live.get(&old) == Some(&0) {
            self.delete(g, old);
        }
        Ok(())
    }

    fn delete(&self, g: &mut Inner, seg: u64) {
        let path = segment_path(&self.dir, seg);
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(segment = %path.display(), error = %e, "cannot delete an acknowledged spool segment");
            return;
        }
        g.live.remove(&seg);
        g.sizes.remove(&seg);
    }

    /// Reads a frame back.
    pub fn read(&self, e: Entry) -> Result<Vec<u8>, SpoolError> {
        let path = segment_path(&self.dir, e.segment);
        let f = File::open(&path).map_err(io(&path))?;
        let mut buf = vec![0u8; e.len as usize];
        f.read_exact_at(&mut buf, e.offset + HEADER).map_err(io(&path))?;
        Ok(buf)
    }

    /// Every merger acknowledged the frame: it may go.
    pub fn release(&self, e: Entry) {
        let mut g = self.lock();
        let left = match g.live.get_mut(&e.segment) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => return,
        };
        if left == 0 && e.segment != g.segment {
            self.delete(&mut g, e.segment);
        }
    }

    /// Bytes held on disk.
    pub fn bytes(&self) -> u64 {
        self.lock().sizes.values().sum()
    }

    /// Frames not yet acknowledged by every merger.
    pub fn pending(&self) -> usize {
        self.lock().live.values().sum()
    }

    /// The configured bound.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
}

fn segment_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("{seg:016}.spool"))
}

fn create_segment(dir: &Path, seg: u64) -> Result<Appender, SpoolError> {
    let path = segment_path(dir, seg);
    Appender::create(&path).map_err(io(&path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn unacknowledged_frames_survive_a_reopen_and_acknowledged_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let (s, held) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(held.is_empty());
        let e = s.append(&[b"one".to_vec(), b"two".to_vec()]).unwrap();
        let e3 = s.append(&[b"three".to_vec()]).unwrap();
        assert_eq!(s.read(e[1]).unwrap(), b"two");
        s.release(e[0]);
        assert_eq!(s.pending(), 2);
        drop(s);
        let (s, held) = Spool::open(dir.path(), 1 << 20).unwrap();
        // Releases are not durable: every frame still on disk comes back for resending.
        let frames: Vec<&[u8]> = held.iter().map(|(_, f)| f.as_slice()).collect();
        assert_eq!(frames, vec![&b"one"[..], b"two", b"three"]);
        for (e, _) in &held {
            s.release(*e);
        }
        assert_eq!(s.pending(), 0);
        assert_eq!(s.bytes(), 0, "acknowledged segments are deleted");
        let _ = e3;
    }

    #[test]
    fn a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        s.append(&[b"whole".to_vec()]).unwrap();
        drop(s);
        let seg = segment_path(dir.path(), 0);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let (s, held) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].1, b"whole");
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), 8 + 5);
        s.append(&[b"next".to_vec()]).unwrap();
    }

    #[test]
    fn a_full_spool_refuses_and_recovers_once_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Spool::open(dir.path(), 100).unwrap();
        let e = s.append(&[vec![1u8; 60]]).unwrap();
        match s.append(&[vec![2u8; 60]]) {
            Err(SpoolError::Full { bytes: 68, max: 100 }) => {}
            other => panic!("expected Full, got {other:?}"),
        }
        s.release(e[0]);
        s.append(&[vec![2u8; 60]]).unwrap();
        assert_eq!(s.bytes(), 68);
    }
}
