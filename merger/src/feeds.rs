//! One live feed per stream, shared by every SSE client of it: the stream's live counts
//! are computed once a second however many viewers follow it, and the feed stops when
//! its last client leaves.

use crate::api::public::LiveGauge;
use crate::ingest::Ingest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Most streams followed at once; more are refused (`503`) rather than each costing a
/// task.
pub const MAX_FEEDS: usize = 10_000;

/// The feeds, by stream.
pub struct LiveFeeds {
    ingest: Ingest,
    live_timeout_ms: u64,
    feeds: Mutex<HashMap<String, watch::Sender<Option<String>>>>,
}

impl LiveFeeds {
    /// No feeds yet.
    pub fn new(ingest: Ingest, live_timeout_ms: u64) -> Arc<LiveFeeds> {
        Arc::new(LiveFeeds {
            ingest,
            live_timeout_ms,
            feeds: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<Option<String>>>> {
        self.feeds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feeds running now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no feed runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Follows `stream`'s live counts (JSON, sent when they change); `None` when too many
    /// streams are followed already.
    pub fn follow(self: &Arc<Self>, stream: &str) -> Option<watch::Receiver<Option<String>>> {
        let mut feeds = self.lock();
        if let Some(tx) = feeds.get(stream) {
            return Some(tx.subscribe());
        }
        if feeds.len() >= MAX_FEEDS {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        feeds.insert(stream.to_owned(), tx.clone());
        drop(feeds);
        let me = self.clone();
        let stream = stream.to_owned();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                {
                    // the last client left: the feed goes (checked under the map's lock,
                    // so a client joining now gets a new feed instead)
                    let mut feeds = me.lock();
                    if tx.receiver_count() == 0 {
                        feeds.remove(&stream);
                        return;
                    }
                }
                let now = LiveGauge::of(&me.ingest.read(), &stream, me.live_timeout_ms).to_json();
                tx.send_if_modified(|old| {
                    let changed = old.as_deref() != Some(now.as_str());
                    if changed {
                        *old = Some(now);
                    }
                    changed
                });
            }
        });
        Some(rx)
    }
}
