//! Checkpoints of the live state, so that a start reads one file and the log behind it
//! instead of every frame ever accepted, and so that the log can be compacted.
//!
//! A checkpoint is the serialised [`LiveState`] as it was right after the frame at log
//! position `pos` was applied, plus `tier_pos`: the last frame before it that went to
//! the tiers. It is written only once the tiers' watermark has reached `tier_pos`, so
//! a start from it replays to the tiers exactly the frames they lack, resolved as the
//! first time (replay from a checkpoint decides as the live run did: see
//! [`LiveState::apply`]).
//!
//! Files are `checkpoint/<segment>-<offset>.ckpt`:
//! `[magic "TALLYCKP"][version u32 LE][len u64 LE][crc32 u32 LE][postcard payload]`,
//! written to a temporary file, `fsync`ed, renamed into place, the directory `fsync`ed.
//! The newest [`KEEP`] are kept and log segments are deleted only behind the oldest of
//! them, so a damaged newest checkpoint falls back to the one before, with the log
//! between still there.

use crate::log::LogPos;
use crate::state::LiveState;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use tally_delta::FactConfig;

const MAGIC: &[u8; 8] = b"TALLYCKP";
/// Version 2 added the bot-event counter to the ingest counters; version 3 keeps only
/// the applied frames' sums in the state (the process's telemetry moved to
/// [`crate::metrics`]); version 4 the engagement counters, watched spans and unlike
/// tombstones of the fact index.
const VERSION: u32 = 4;
const HEAD: usize = 8 + 4 + 8 + 4;
/// Checkpoints kept.
pub const KEEP: usize = 2;

/// Errors reading or writing checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file system refused.
    #[error("checkpoint I/O in {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is not a whole checkpoint of this version.
    #[error("checkpoint {path} is unreadable: {why}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a checkpoint holds besides the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The state includes every log record up to here.
    pub pos: LogPos,
    /// The last of those records that went to the tiers (none: no frame ever did).
    pub tier_pos: Option<LogPos>,
}

#[derive(Serialize)]
struct Out<'a> {
    mark: Mark,
    state: &'a LiveState,
}

#[derive(Deserialize)]
struct In {
    mark: Mark,
    state: LiveState,
}

/// Serialises the state for a checkpoint (the caller holds the state's lock only for
/// this; writing the file happens elsewhere).
pub fn encode(mark: Mark, state: &LiveState) -> Vec<u8> {
    let payload = postcard::to_allocvec(&Out { mark, state }).unwrap_or_else(|e| {
        // every type in the state serialises; this would be a bug, not bad input
        unreachable!("serialising the state: {e}")
    });
    let mut out = Vec::with_capacity(HEAD + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Reads a checkpoint's bytes (`path` names it in errors).
pub fn decode(path: &Path, bytes: &[u8]) -> Result<(Mark, LiveState), CheckpointError> {
    let bad = |why: String| CheckpointError::Damaged {
        path: path.to_owned(),
        why,
    };
    if bytes.len() < HEAD || &bytes[..8] != MAGIC {
        return Err(bad("not a checkpoint (no header)".into()));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
    if version != VERSION {
        return Err(bad(format!("version {version}, this merger reads {VERSION}")));
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(bytes[20..24].try_into().unwrap_or_default());
    let payload = &bytes[HEAD..];
    if payload.len() as u64 != len {
        return Err(bad(format!("{} payload bytes, the header says {len}", payload.len())));
    }
    if crc32fast::hash(payload) != crc {
        return Err(bad("checksum mismatch".into()));
    }
    let inp: In = postcard::from_bytes(payload).map_err(|e| bad(e.to_string()))?;
    Ok((inp.mark, inp.state))
}

fn file_name(pos: LogPos) -> String {
    format!("{:08}-{:012}.ckpt", pos.segment, pos.offset)
}

/// The checkpoint files in `dir`, newest first.
pub fn list(dir: &Path) -> Result<Vec<(LogPos, PathBuf)>, CheckpointError> {
    let mut out: Vec<(LogPos, PathBuf)> = crate::log::files_ending(dir, ".ckpt")
        .map_err(io_err(dir))?
        .into_iter()
        .filter_map(|(stem, path)| {
            let (seg, off) = stem.split_once('-')?;
            Some((
                LogPos {
                    segment: seg.parse().ok()?,
                    offset: off.parse().ok()?,
                },
                path,
            ))
        })
        .collect();
    out.sort_unstable_by(|a, b| b.0.cmp(&a.0));
    Ok(out)
}

/// What [`load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The checkpoint started from, with its state (settings applied).
    pub start: Option<(Mark, LiveState)>,
    /// Checkpoints that could not be read (each logged).
    pub damaged: usize,
    /// Checkpoints passed over because the tiers are behind them.
    pub skipped: usize,
}

/// Reads the newest usable checkpoint: readable, and not ahead of the tiers (whose
/// watermark is `tiers`; a checkpoint whose `tier_pos` the tiers have not reached would
/// leave a hole in history, so an older one, or the whole log, is replayed instead).
pub fn load(
    dir: &Path,
    tiers: Option<LogPos>,
    facts: FactConfig,
    live_timeout_ms: u64,
) -> Result<Loaded, CheckpointError> {
    let mut out = Loaded::default();
    for (_, path) in list(dir)? {
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        match decode(&path, &bytes) {
            Ok((mark, state)) => {
                if mark.tier_pos.is_some_and(|t| tiers.is_none_or(|w| w < t)) {
                    tracing::warn!(checkpoint = %path.display(), "the tiers are behind this checkpoint; starting from an older one");
                    out.skipped += 1;
                    continue;
                }
                let state = state.restored(facts, live_timeout_ms);
                out.start = Some((mark, state));
                return Ok(out);
            }
            Err(e) => {
                tracing::error!(error = %e, "damaged checkpoint; trying an older one");
                out.damaged += 1;
            }
        }
    }
    Ok(out)
}

/// Writes a checkpoint durably and drops all but the newest [`KEEP`]; returns the
/// oldest kept checkpoint's position (the log is needed from there on).
pub fn write(dir: &Path, pos: LogPos, bytes: &[u8]) -> Result<LogPos, CheckpointError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let path = dir.join(file_name(pos));
    let tmp = dir.join(format!("{}.tmp", file_name(pos)));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&path)(e));
    }
    let all = list(dir)?;
    for (_, old) in all.iter().skip(KEEP) {
        if let Err(e) = fs::remove_file(old) {
            tracing::warn!(checkpoint = %old.display(), error = %e, "could not remove an old checkpoint");
        }
    }
    Ok(all.iter().take(KEEP).last().map_or(pos, |(p, _)| *p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(segment: u64, offset: u64) -> LogPos {
        LogPos { segment, offset }
    }

    #[test]
    fn newest_readable_checkpoint_not_ahead_of_the_tiers_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LiveState::default();
        s.sums.frames = 1;
        let m1 = Mark {
            pos: pos(1, 100),
            tier_pos: Some(pos(1, 90)),
        };
        write(dir.path(), m1.pos, &encode(m1, &s)).unwrap();
        s.sums.frames = 2;
        let m2 = Mark {
            pos: pos(2, 50),
            tier_pos: Some(pos(2, 50)),
        };
        let oldest = write(dir.path(), m2.pos, &encode(m2, &s)).unwrap();
        assert_eq!(oldest, m1.pos);
        let fc = FactConfig::default();
        let l = load(dir.path(), Some(pos(3, 0)), fc, 0).unwrap();
        let (mark, state) = l.start.unwrap();
        assert_eq!((mark, state.sums.frames), (m2, 2));
        // tiers only at (2, 0): the newest would leave a hole, the older one is used
        let l = load(dir.path(), Some(pos(2, 0)), fc, 0).unwrap();
        assert_eq!((l.start.unwrap().0, l.skipped), (m1, 1));
        // the newest damaged: the older one is used and the damage counted
        let newest = dir.path().join(file_name(m2.pos));
        let mut bytes = fs::read(&newest).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        fs::write(&newest, &bytes).unwrap();
        let l = load(dir.path(), Some(pos(9, 0)), fc, 0).unwrap();
        assert_eq!((l.start.unwrap().0, l.damaged), (m1, 1));
        // a third checkpoint pushes the first out
        let m3 = Mark {
            pos: pos(3, 10),
            tier_pos: None,
        };
        assert_eq!(write(dir.path(), m3.pos, &encode(m3, &s)).unwrap(), m2.pos);
        assert_eq!(list(dir.path()).unwrap().len(), KEEP);
    }

    #[test]
    fn truncated_and_foreign_files_are_damage_not_state() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mark {
            pos: pos(1, 1),
            tier_pos: None,
        };
        let bytes = encode(m, &LiveState::default());
        fs::write(dir.path().join(file_name(m.pos)), &bytes[..bytes.len() - 3]).unwrap();
        fs::write(dir.path().join(file_name(pos(0, 5))), b"hello").unwrap();
        let l = load(dir.path(), None, FactConfig::default(), 0).unwrap();
        assert!(l.start.is_none());
        assert_eq!(l.damaged, 2);
    }
}
