//! Simulated players for Tally, fed a clock like the collector core: [`Traffic::tick`]
//! returns the beacons due at `now`, the caller delivers them however it likes (HTTP to
//! an edge agent, a Spin component, a collector in-process) and reports each outcome
//! with [`Traffic::outcome`]; the ground truth ([`Truth`]) counts only what an edge
//! accepted, after the simulation's own retries, duplicates and refreshes are removed.

mod deliver;
mod players;
mod zipf;

pub use deliver::{client_ip, deliver};
pub use players::{Beacon, Outcome, Plan, Traffic, Truth, Viral};
pub use zipf::Zipf;
