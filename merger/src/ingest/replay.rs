//! Replaying the frame log into the state at start (after a checkpoint, or from the
//! beginning), and into the tier writer past the tiers' watermark.

use super::TierSender;
use crate::log::LogPos;
use crate::state::LiveState;
use std::sync::Arc;
use tally_delta::DeltaFrame;

/// Replays log records into the state (and, past the tiers' watermark, into the tier
/// writer), one at a time: hand it to [`crate::log::FrameLog::replay`]. Where the replay got to is
/// in the state's [`LiveState::progress`].
pub struct Replay<'a> {
    state: &'a mut LiveState,
    tiers: Option<(&'a TierSender, Option<LogPos>)>,
    now: u64,
    /// Records replayed.
    pub records: usize,
}

impl<'a> Replay<'a> {
    /// Replays into `state` (whose progress says where a checkpoint left it); frames
    /// past `watermark` also go to `tiers`.
    pub fn new(state: &'a mut LiveState, tiers: Option<(&'a TierSender, Option<LogPos>)>) -> Replay<'a> {
        Replay {
            state,
            tiers,
            now: tally_delta::now_ms(),
            records: 0,
        }
    }

    /// Applies one record.
    pub fn record(&mut self, pos: LogPos, bytes: Vec<u8>) {
        self.records += 1;
        match DeltaFrame::decode(&bytes) {
            Ok(mut f) => {
                let digest = crate::state::frame_digest(&bytes);
                if self.state.apply_logged(&mut f, digest, pos, self.now)
                    && let Some((tx, watermark)) = &self.tiers
                    && watermark.is_none_or(|w| pos > w)
                {
                    let _ = tx.send((pos, Arc::new(f)));
                }
            }
            Err(e) => {
                self.state.progress.pos = Some(pos);
                tracing::error!(error = %e, "undecodable record in the frame log, skipped");
            }
        }
    }
}
