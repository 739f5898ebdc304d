//! The collector's conformance tests, in one binary: every scenario against the native
//! core and the real `collector.wasm` (identical outcomes, byte-identical frames), the
//! exactness properties of merged frames, and proptest properties of the core.

mod agreement;
mod exactness;
mod properties;
