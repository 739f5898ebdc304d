//! The workspace's WebAssembly components, built by this crate's build script and
//! embedded, so every binary and test that hosts them carries the current build.

include!(concat!(env!("OUT_DIR"), "/components.rs"));
