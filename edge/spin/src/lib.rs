//! The Spin component: the collector core behind a spin-sdk HTTP handler.
//!
//! Spin creates a fresh instance for every request, so each session's dedup memory and
//! unacknowledged frames live in Spin's key-value store ([`session`]); every request's
//! counted events become one delta frame, posted to the merger's HTTPS frame ingest with
//! the frame id as its idempotency key. The handler exists only for `wasm32`; the session
//! logic and settings are plain Rust and tested natively.

pub mod session;
pub mod settings;

#[cfg(target_arch = "wasm32")]
mod handler;
