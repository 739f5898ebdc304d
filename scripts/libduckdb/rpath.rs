// The build script of every package whose binaries or tests load libduckdb.so (included
// by their build.rs): puts DUCKDB_LIB_DIR (set in .cargo/config.toml, filled by
// scripts/deps) on the binaries' rpath, so `tally`, the benchmarks and the tests run
// without LD_LIBRARY_PATH, and says what to run when the library is missing.
fn main() {
    println!("cargo:rerun-if-env-changed=DUCKDB_LIB_DIR");
    let Ok(dir) = std::env::var("DUCKDB_LIB_DIR") else {
        return;
    };
    if !std::path::Path::new(&dir).join("libduckdb.so").exists() {
        panic!("{dir}/libduckdb.so is missing: run scripts/deps (it installs DuckDB's library)");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
}
