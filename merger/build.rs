//! Puts the linked libduckdb.so on the rpath of this package's binaries and tests.

include!("../scripts/libduckdb/rpath.rs");
