//! The write-ahead log of accepted beacons: `202 Accepted` means durable.
//!
//! Every beacon part a worker's collector takes is first appended to that worker's WAL
//! file, and the beacon is answered only once the file is `fsync`ed up to it (group
//! commit: one `fsync` covers every beacon written before it, so concurrent beacons
//! share it). A flush closes the file: its beacons are now in the frame the flush made,
//! and once that frame is in the spool (fsynced) the file is deleted.
//!
//! A WAL file is `wal/<worker>-<generation>.wal` with records of `tally-records`: the
//! first names the frame that will cover the file's beacons (the instance's epoch and
//! the sequence number of its next flush); each later one is a beacon part with the
//! request facts it arrived with. On start, a file whose frame is in the spool is
//! deleted; every other file's beacons are ingested again (arrival times kept), which
//! also restores the sessions' dedup memory, and deleted once the replayed beacons are
//! durable in the new files.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use tally_collector::RequestFacts;
use tally_records::{Appender, WriteError};

/// The first record of a WAL file: the frame that covers its beacons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Covers {
    /// The instance's epoch.
    pub epoch: u64,
    /// The sequence number of the frame its next flush makes.
    pub seq: u64,
}

/// One beacon part as the collector took it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Logged {
    /// Arrival time (ms).
    pub arrival_ms: u64,
    /// Country header value.
    pub country: String,
    /// Client address.
    pub client_addr: String,
    /// User-Agent.
    pub user_agent: String,
    /// The body the collector was given.
    pub body: Vec<u8>,
}

/// [`Logged`] as written: borrowed from the request, so appending copies the beacon
/// once (into the record), not twice. Same encoding as [`Logged`].
#[derive(Serialize)]
struct LoggedRef<'a> {
    arrival_ms: u64,
    country: &'a str,
    client_addr: &'a str,
    user_agent: &'a str,
    body: &'a [u8],
}

impl Logged {
    /// The request facts the beacon arrived with.
    pub fn facts(&self) -> RequestFacts {
        RequestFacts {
            country: self.country.clone(),
            client_addr: self.client_addr.clone(),
            user_agent: self.user_agent.clone(),
            arrival_ms: self.arrival_ms,
            bot: None,
        }
    }
}

/// Why the WAL could not take or keep a beacon.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Writing or syncing failed.
    #[error("write-ahead log: {0}")]
    Write(#[from] WriteError),
    /// Other file system failure.
    #[error("write-ahead log {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// A file is not a WAL file of this build.
    #[error("write-ahead log {0} is not readable: {1}")]
    Format(PathBuf, String),
}

/// The file a worker is writing.
struct Current {
    out: Appender,
    generation: u64,
}

/// What the syncer works on.
#[derive(Default)]
struct SyncState {
    /// The file being written (a second handle, so syncing needs no worker lock).
    file: Option<(u64, File)>,
    /// Bytes written to that file so far.
    written: u64,
    /// Everything up to (generation, offset) is durable.
    synced: (u64, u64),
    stop: bool,
}

/// Where durability stands, as beacons see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Durable {
    /// Everything up to (generation, offset) is durable.
    synced: (u64, u64),
    /// The last `fsync` failed: beacons beyond `synced` are not durable.
    failed: bool,
}

/// Group commit: one thread per log runs `fsync` whenever bytes were written since the
/// last one, and every beacon waiting on those bytes is woken at once.
struct Shared {
    state: Mutex<SyncState>,
    wake: Condvar,
    durable: tokio::sync::watch::Sender<Durable>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, s: &SyncState, failed: bool) {
        let d = Durable {
            synced: s.synced,
            failed,
        };
        self.durable.send_if_modified(|old| {
            let changed = *old != d;
            *old = d;
            changed
        });
    }

    /// The syncer's loop.
    fn run(&self) {
        let mut s = self.lock();
        loop {
            while !s.stop && !s.file.as_ref().is_some_and(|(g, _)| (*g, s.written) > s.synced) {
                s = self.wake.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            if s.stop {
                return;
            }
            let Some((generation, file)) = s.file.as_ref().and_then(|(g, f)| Some((*g, f.try_clone().ok()?))) else {
                continue;
            };
            let upto = s.written;
            drop(s);
            let result = file.sync_data();
            s = self.lock();
            match result {
                Ok(()) => {
                    if (generation, upto) > s.synced {
                        s.synced = (generation, upto);
                    }
                    self.publish(&s, false);
                }
                Err(e) => {
                    tracing::error!(error = %e, "write-ahead log fsync failed; beacons waiting on it are refused");
                    self.publish(&s, true);
                    // do not spin on a failing disk
                    drop(s);
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    s = self.lock();
                }
            }
        }
    }
}

/// A beacon's place in the WAL: wait on it before answering.
pub struct Ticket {
    durable: tokio::sync::watch::Receiver<Durable>,
    at: (u64, u64),
}

impl Ticket {
    /// Resolves once the beacon is durable (an `fsync` covered it, or a flush closed
    /// its file); `Err` when the `fsync` that should have covered it failed.
    pub async fn wait(mut self) -> Result<(), WalError> {
        let at = self.at;
        let d = self
            .durable
            .wait_for(|d| d.synced >= at || d.failed)
            .await
            .map_err(|_| WalError::Format(PathBuf::from("wal"), "the log was closed".into()))?;
        if d.synced >= at {
            Ok(())
        } else {
            Err(WalError::Io(
                PathBuf::from("wal"),
                std::io::Error::other("fsync failed"),
            ))
        }
    }
}

/// One worker's write-ahead log.
pub struct Wal {
    dir: PathBuf,
    worker: usize,
    next_generation: u64,
    current: Option<Current>,
    shared: Arc<Shared>,
}

/// A WAL file found on disk.
#[derive(Debug)]
pub struct Found {
    /// Its path.
    pub path: PathBuf,
    /// The worker that wrote it.
    pub worker: usize,
    /// The frame that covers it, if it got as far as its first record.
    pub covers: Option<Covers>,
    /// Its beacons.
    pub beacons: Vec<Logged>,
}

fn file_name(worker: usize, generation: u64) -> String {
    format!("{worker}-{generation:016}.wal")
}

fn parse_name(name: &str) -> Option<(usize, u64)> {
    let (w, g) = name.strip_suffix(".wal")?.split_once('-')?;
    Some((w.parse().ok()?, g.parse().ok()?))
}

/// Every WAL file in `dir`, oldest generation first.
pub fn read_all(dir: &Path) -> Result<Vec<Found>, WalError> {
    let mut names: Vec<(u64, usize, PathBuf)> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let (w, g) = parse_name(e.file_name().to_str()?)?;
                Some((g, w, e.path()))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(WalError::Io(dir.to_owned(), e)),
    };
    names.sort();
    let mut out = Vec::new();
    for (_, worker, path) in names {
        let bytes = std::fs::read(&path).map_err(|e| WalError::Io(path.clone(), e))?;
        let (covers, beacons) = parse(&path, &bytes)?;
        out.push(Found {
            path,
            worker,
            covers,
            beacons,
        });
    }
    Ok(out)
}

/// Reads one WAL file's bytes (`path` names it in errors and logs): the frame that
/// covers it, if it got as far as its first record, and its intact beacons.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<(Option<Covers>, Vec<Logged>), WalError> {
    let scan = tally_records::scan(bytes);
    for (from, to) in &scan.damaged {
        tracing::error!(file = %path.display(), from, to, "damaged region in the write-ahead log; replaying the intact beacons around it");
    }
    let mut records = scan.records.into_iter();
    let covers = match records.next() {
        Some(r) => Some(
            postcard::from_bytes::<Covers>(&r.payload).map_err(|e| WalError::Format(path.to_owned(), e.to_string()))?,
        ),
        None => None,
    };
    let beacons = records
        .filter_map(|r| match postcard::from_bytes::<Logged>(&r.payload) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "unreadable beacon in the write-ahead log; skipped");
                None
            }
        })
        .collect();
    Ok((covers, beacons))
}

impl Wal {
    /// A worker's WAL in `dir`, numbering new files after every generation present.
    pub fn open(dir: &Path, worker: usize) -> Result<Wal, WalError> {
        std::fs::create_dir_all(dir).map_err(|e| WalError::Io(dir.to_owned(), e))?;
        let next_generation = std::fs::read_dir(dir)
            .map_err(|e| WalError::Io(dir.to_owned(), e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_name(e.file_name().to_str()?).map(|(_, g)| g))
            .max()
            .map_or(1, |g| g + 1);
        let shared = Arc::new(Shared {
            state: Mutex::new(SyncState::default()),
            wake: Condvar::new(),
            durable: tokio::sync::watch::Sender::new(Durable::default()),
        });
        let syncer = shared.clone();
        std::thread::Builder::new()
            .name(format!("wal-sync-{worker}"))
            .spawn(move || syncer.run())
            .map_err(|e| WalError::Io(dir.to_owned(), e))?;
        Ok(Wal {
            dir: dir.to_owned(),
            worker,
            next_generation,
            current: None,
            shared,
        })
    }

    /// Appends a beacon part (not durable until its ticket is waited on). `covers` names
    /// the frame the instance's next flush makes; it starts a new file when none is open.
    pub fn append(&mut self, covers: Covers, body: &[u8], facts: &RequestFacts) -> Result<Ticket, WalError> {
        if self.current.is_none() {
            let generation = self.next_generation;
            let path = self.dir.join(file_name(self.worker, generation));
            // each attempt gets its own generation: a file left by a failed one (a full
            // disk) is never reopened, and is removed when it holds nothing
            self.next_generation += 1;
            let mut out = Appender::create(&path).map_err(|e| WalError::Io(path.clone(), e))?;
            let head = postcard::to_allocvec(&covers).map_err(|e| WalError::Format(path.clone(), e.to_string()))?;
            if let Err(e) = out.append(&[head]) {
                drop(out);
                let _ = std::fs::remove_file(&path);
                return Err(e.into());
            }
            // a second handle: beacons sync through it without the worker's lock
            let second = File::open(&path).map_err(|e| WalError::Io(path.clone(), e))?;
            let mut st = self.shared.lock();
            st.file = Some((generation, second));
            st.written = out.len();
            drop(st);
            self.current = Some(Current { out, generation });
        }
        let cur = self
            .current
            .as_mut()
            .ok_or_else(|| WalError::Format(self.dir.clone(), "no open file".into()))?;
        let rec = LoggedRef {
            arrival_ms: facts.arrival_ms,
            country: &facts.country,
            client_addr: &facts.client_addr,
            user_agent: &facts.user_agent,
            body,
        };
        let bytes =
            postcard::to_allocvec(&rec).map_err(|e| WalError::Format(cur.out.path().to_owned(), e.to_string()))?;
        let end = cur.out.append(&[bytes])?.pop().unwrap_or(0);
        {
            let mut st = self.shared.lock();
            st.written = st.written.max(end);
        }
        self.shared.wake.notify_one();
        Ok(Ticket {
            durable: self.shared.durable.subscribe(),
            at: (cur.generation, end),
        })
    }

    /// Closes the current file (the flush that covers it was just taken): syncs it,
    /// releases every beacon waiting on it, and returns its path, to be deleted once the
    /// flush's frame is in the spool. `None` when no beacon came since the last flush.
    pub fn close(&mut self) -> Option<PathBuf> {
        let cur = self.current.take()?;
        let mut st = self.shared.lock();
        // Synced through the syncer's handle (the appender's own idea of what is synced
        // is stale, so its cut-back-on-failure must not run here).
        if let Some((_, file)) = st.file.take()
            && let Err(e) = file.sync_data()
        {
            // The frame about to be spooled holds these beacons; the file stays on disk
            // until then either way.
            tracing::error!(error = %e, "cannot sync a write-ahead log file at flush");
        }
        st.synced = (cur.generation, u64::MAX);
        st.written = 0;
        self.shared.publish(&st, false);
        Some(cur.out.path().to_owned())
    }

    /// Makes everything appended durable now (after a replay).
    pub fn sync(&mut self) -> Result<(), WalError> {
        if let Some(cur) = self.current.as_mut() {
            cur.out.sync()?;
            let mut st = self.shared.lock();
            st.synced = st.synced.max((cur.generation, cur.out.len()));
            self.shared.publish(&st, false);
        }
        Ok(())
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
    }
}

/// Deletes files whose beacons are durable elsewhere, and makes that durable.
pub fn delete(paths: &[PathBuf]) {
    let mut dirs = Vec::new();
    for p in paths {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(file = %p.display(), error = %e, "cannot delete a write-ahead log file"),
        }
        if let Some(d) = p.parent()
            && !dirs.contains(&d)
        {
            dirs.push(d);
        }
    }
    for d in dirs {
        if let Err(e) = tally_records::sync_dir(d) {
            tracing::error!(dir = %d.display(), error = %e, "cannot sync the write-ahead log directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(at: u64) -> RequestFacts {
        RequestFacts {
            country: "DE".into(),
            client_addr: "10.0.0.1".into(),
            user_agent: "t".into(),
            arrival_ms: at,
            bot: None,
        }
    }

    #[tokio::test]
    async fn beacons_read_back_with_the_frame_that_covers_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 3).unwrap();
        let c = Covers { epoch: 7, seq: 2 };
        let t1 = w.append(c, b"one", &facts(10)).unwrap();
        let t2 = w.append(c, b"two", &facts(11)).unwrap();
        t2.wait().await.unwrap();
        t1.wait().await.unwrap();
        let found = read_all(dir.path()).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].worker, found[0].covers), (3, Some(c)));
        let bodies: Vec<&[u8]> = found[0].beacons.iter().map(|b| b.body.as_slice()).collect();
        assert_eq!(bodies, vec![&b"one"[..], b"two"]);
        assert_eq!(found[0].beacons[1].facts(), facts(11));
        // a flush closes the file; the next beacon opens a newer one
        let closed = w.close().unwrap();
        assert!(w.close().is_none(), "nothing since the flush");
        w.append(Covers { epoch: 7, seq: 3 }, b"three", &facts(12))
            .unwrap()
            .wait()
            .await
            .unwrap();
        delete(&[closed]);
        let found = read_all(dir.path()).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].covers, Some(Covers { epoch: 7, seq: 3 }));
        // a reopened WAL numbers after what is there
        let w2 = Wal::open(dir.path(), 3).unwrap();
        assert!(w2.next_generation > 2);
    }
}
