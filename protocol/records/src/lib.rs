//! Append-only files of checksummed records, the one format behind the merger's frame
//! log, the agent's spool and the agent's write-ahead log.
//!
//! A record is `[len: u32 LE][crc32 of the payload: u32 LE][payload]`, with
//! `0 < len <= MAX_RECORD` (a zero-filled region would otherwise read as empty records).
//!
//! Writing ([`Appender`]): after a failed write the file is cut back to its last good
//! length, and after a failed `fsync` back to its last *synced* length (then synced
//! again), so later records are never appended after a partial one, and nothing that was
//! not durable when `fsync` failed stays behind to be mistaken for data (the page cache
//! may have dropped it: Linux reports a write-back error once). When even that fails
//! the appender is [`WriteError::Broken`] and refuses every further write: the owner
//! must stop acknowledging.
//!
//! Reading ([`scan`]): every intact record is returned. A damaged region followed by
//! intact records is reported in [`Scan::damaged`], never silently cut; only bytes after
//! the last intact record (a torn tail: a crash mid-write, never acknowledged) are left
//! out as [`Scan::torn_tail`].

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Bytes before every payload.
pub const HEADER: usize = 8;
/// No payload is larger.
pub const MAX_RECORD: usize = 64 << 20;

/// Appends one record to `out`.
pub fn put(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// One intact record found by [`scan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Offset of its header.
    pub offset: u64,
    /// Offset just past it.
    pub end: u64,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// What a file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Every intact record, in file order.
    pub records: Vec<Record>,
    /// Regions `[from, to)` that are not records but have intact records after them.
    pub damaged: Vec<(u64, u64)>,
    /// Offset of bytes after the last intact record that are not a record, if any.
    pub torn_tail: Option<u64>,
    /// Offset just past the last intact record.
    pub valid_len: u64,
}

fn record_at(bytes: &[u8], at: usize) -> Option<(usize, &[u8])> {
    let head = bytes.get(at..at + HEADER)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let payload = bytes.get(at + HEADER..at + HEADER + len)?;
    (crc32fast::hash(payload) == crc).then_some((at + HEADER + len, payload))
}

/// Reads every intact record of `bytes` (a whole file).
pub fn scan(bytes: &[u8]) -> Scan {
    let mut s = Scan::default();
    let mut at = 0usize;
    while at < bytes.len() {
        if let Some((end, payload)) = record_at(bytes, at) {
            s.records.push(Record {
                offset: at as u64,
                end: end as u64,
                payload: payload.to_vec(),
            });
            s.valid_len = end as u64;
            at = end;
            continue;
        }
        // Not a record here: look for the next intact one before calling it a tail.
        match (at + 1..bytes.len().saturating_sub(HEADER)).find(|&o| record_at(bytes, o).is_some()) {
            Some(next) => {
                s.damaged.push((at as u64, next as u64));
                at = next;
            }
            None => {
                s.torn_tail = Some(at as u64);
                break;
            }
        }
    }
    s
}

/// Reads and scans a whole file.
pub fn scan_file(path: &Path) -> io::Result<Scan> {
    Ok(scan(&std::fs::read(path)?))
}

/// Why an append or sync did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// It failed; the file was restored to its last good (or last synced) length, so
    /// writing may be tried again.
    #[error("{path}: {source} (the file was restored to its last good length)")]
    Failed {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// It failed and the file could not be restored: nothing more may be written to it.
    #[error("{path}: {source}; the file could not be restored and takes no more writes")]
    Broken {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A payload is empty or larger than [`MAX_RECORD`].
    #[error("record of {0} bytes: records hold 1 to {MAX_RECORD} bytes")]
    Size(usize),
}

/// The writing end of one record file.
#[derive(Debug)]
pub struct Appender {
    file: File,
    path: PathBuf,
    len: u64,
    synced: u64,
    broken: bool,
}

/// Makes a directory entry (a created or deleted file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Appender {
    /// Creates a new, empty file (its directory entry made durable).
    pub fn create(path: &Path) -> io::Result<Appender> {
        let file = OpenOptions::new().create_new(true).write(true).open(path)?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(Appender {
            file,
            path: path.to_owned(),
            len: 0,
            synced: 0,
            broken: false,
        })
    }

    /// Opens an existing file to append after its first `valid_len` bytes; anything
    /// after them is cut off (call only when [`scan`] says they are a torn tail).
    pub fn open(path: &Path, valid_len: u64) -> io::Result<Appender> {
        let mut file = OpenOptions::new().write(true).open(path)?;
        if file.metadata()?.len() != valid_len {
            file.set_len(valid_len)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::Start(valid_len))?;
        Ok(Appender {
            file,
            path: path.to_owned(),
            len: valid_len,
            synced: valid_len,
            broken: false,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of whole records written.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether a failure left the file unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    fn broken(&mut self, source: io::Error) -> WriteError {
        self.broken = true;
        WriteError::Broken {
            path: self.path.clone(),
            source,
        }
    }

    /// Cuts the file back to `len` bytes and positions the writer there.
    fn restore(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.seek(SeekFrom::Start(len))?;
        self.len = len;
        Ok(())
    }

    /// Appends records in one write (not durable until [`Appender::sync`]); returns the
    /// offset just past each.
    pub fn append<P: AsRef<[u8]>>(&mut self, payloads: &[P]) -> Result<Vec<u64>, WriteError> {
        if self.broken {
            return Err(WriteError::Broken {
                path: self.path.clone(),
                source: io::Error::other("an earlier failure broke this file"),
            });
        }
        let mut buf = Vec::with_capacity(payloads.iter().map(|p| p.as_ref().len() + HEADER).sum());
        let mut ends = Vec::with_capacity(payloads.len());
        for p in payloads {
            let p = p.as_ref();
            if p.is_empty() || p.len() > MAX_RECORD {
                return Err(WriteError::Size(p.len()));
            }
            put(&mut buf, p);
            ends.push(self.len + buf.len() as u64);
        }
        if let Err(e) = self.file.write_all(&buf) {
            let good = self.len;
            return Err(match self.restore(good) {
                Ok(()) => WriteError::Failed {
                    path: self.path.clone(),
                    source: e,
                },
                Err(_) => self.broken(e),
            });
        }
        self.len += buf.len() as u64;
        Ok(ends)
    }

    /// Makes everything appended durable. On failure the file is cut back to what the
    /// last successful sync covered and synced again.
    pub fn sync(&mut self) -> Result<(), WriteError> {
        if self.broken {
            return Err(WriteError::Broken {
                path: self.path.clone(),
                source: io::Error::other("an earlier failure broke this file"),
            });
        }
        match self.file.sync_data() {
            Ok(()) => {
                self.synced = self.len;
                Ok(())
            }
            Err(e) => {
                let synced = self.synced;
                match self.restore(synced).and_then(|()| self.file.sync_data()) {
                    Ok(()) => Err(WriteError::Failed {
                        path: self.path.clone(),
                        source: e,
                    }),
                    Err(_) => Err(self.broken(e)),
                }
            }
        }
    }

    /// Appends and syncs.
    pub fn append_durable<P: AsRef<[u8]>>(&mut self, payloads: &[P]) -> Result<Vec<u64>, WriteError> {
        let ends = self.append(payloads)?;
        self.sync()?;
        Ok(ends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file_of(records: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            put(&mut out, r);
        }
        out
    }

    #[test]
    fn a_torn_tail_is_told_apart_from_damage_in_the_middle() {
        let mut bytes = file_of(&[b"one", b"two"]);
        let whole = bytes.len() as u64;
        bytes.extend_from_slice(&[9, 0, 0, 0, 1, 2]);
        let s = scan(&bytes);
        assert_eq!(s.records.len(), 2);
        assert_eq!((s.torn_tail, s.valid_len), (Some(whole), whole));
        assert!(s.damaged.is_empty());

        // flip a byte of the first record: the second is still found, and reported
        let mut bytes = file_of(&[b"first", b"second", b"third"]);
        bytes[10] ^= 0x40;
        let s = scan(&bytes);
        let got: Vec<&[u8]> = s.records.iter().map(|r| r.payload.as_slice()).collect();
        assert_eq!(got, vec![&b"second"[..], b"third"]);
        assert_eq!(s.damaged, vec![(0, 13)]);
        assert_eq!(s.torn_tail, None);
    }

    #[test]
    fn zero_filled_regions_are_not_records() {
        let mut bytes = file_of(&[b"a"]);
        bytes.extend_from_slice(&[0u8; 64]);
        let s = scan(&bytes);
        assert_eq!(s.records.len(), 1);
        assert_eq!(s.torn_tail, Some(9));
        let mut a = Appender::create(&tempfile::tempdir().unwrap().path().join("x")).unwrap();
        assert!(matches!(a.append(&[b""]), Err(WriteError::Size(0))));
    }

    #[test]
    fn a_failed_write_leaves_no_partial_record() {
        // /dev/full fails every write with ENOSPC: the appender must not count it
        let Ok(file) = OpenOptions::new().write(true).open("/dev/full") else {
            return;
        };
        let mut a = Appender {
            file,
            path: "/dev/full".into(),
            len: 0,
            synced: 0,
            broken: false,
        };
        let e = a.append(&[b"payload"]).unwrap_err();
        assert!(
            matches!(e, WriteError::Failed { .. } | WriteError::Broken { .. }),
            "{e}"
        );
        assert_eq!(a.len(), 0);
    }

    #[test]
    fn appended_records_read_back_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut a = Appender::create(&p).unwrap();
        let ends = a.append_durable(&[b"x".as_slice(), b"yy"]).unwrap();
        assert_eq!(ends, vec![9, 19]);
        drop(a);
        let s = scan_file(&p).unwrap();
        let mut a = Appender::open(&p, s.valid_len).unwrap();
        a.append_durable(&[b"zzz"]).unwrap();
        let s = scan_file(&p).unwrap();
        let got: Vec<&[u8]> = s.records.iter().map(|r| r.payload.as_slice()).collect();
        assert_eq!(got, vec![&b"x"[..], b"yy", b"zzz"]);
    }

    proptest! {
        /// Any file is read without panicking, and every record it reports is intact.
        #[test]
        fn scanning_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let s = scan(&bytes);
            for r in &s.records {
                prop_assert!(r.end as usize <= bytes.len());
                prop_assert_eq!(&bytes[r.offset as usize + HEADER..r.end as usize], r.payload.as_slice());
            }
        }

        /// Records survive any one corrupted byte except those of the record it hits.
        #[test]
        fn one_flipped_byte_costs_at_most_its_record(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 1..12),
            at in any::<prop::sample::Index>(),
        ) {
            let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            let mut bytes = file_of(&refs);
            let i = at.index(bytes.len());
            bytes[i] ^= 0x5a;
            let s = scan(&bytes);
            prop_assert!(s.records.len() + 1 >= payloads.len());
            for r in &s.records {
                prop_assert!(payloads.contains(&r.payload));
            }
        }
    }
}
