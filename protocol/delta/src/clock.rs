//! The one wall clock of the workspace: frames, tokens, beacons and the merger's tiers
//! all speak milliseconds since the Unix epoch. The collector core never reads it (it is
//! sans-IO: hosts pass `now` in); hosts, the merger, tools and tests do.

/// Milliseconds since the Unix epoch (0 if the system clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
