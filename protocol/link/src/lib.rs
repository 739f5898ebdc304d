//! The link between edges and mergers: the QUIC protocol's messages, the edge's client,
//! and the TLS set-up both sides share (a merger's self-signed certificate, pinned by
//! its SHA-256 fingerprint at the edges), the bounded HTTP(S) listener both sides serve
//! with, the constant-time secret check, and the metrics text both sides expose.
//!
//! Kept apart from the merger so that edge hosts do not link the merger's storage.

pub mod client;
pub mod exposition;
pub mod listener;
pub mod protocol;
pub mod secret;
pub mod tls;
