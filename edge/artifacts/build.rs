//! Builds the workspace's WebAssembly components for `wasm32-wasip2` with a nested cargo,
//! so that `cargo test` / `cargo run` from a clean clone need no manual step.
//!
//! The nested build uses its own target directory (beside this build's), so it never
//! waits on the outer cargo's lock, and the `wasm` profile (release, LTO).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (cargo package, file name of the artifact it produces, name we give it)
const COMPONENTS: &[(&str, &str, &str)] = &[
    (
        "tally-collector-component",
        "tally_collector_component.wasm",
        "collector.wasm",
    ),
    (
        "tally-spin-component",
        "tally_spin_component.wasm",
        "spin-collector.wasm",
    ),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("edge/artifacts sits two levels down");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out: put the nested build at <target>/wasm-components.
    let target_root = out_dir
        .ancestors()
        .nth(4)
        .expect("OUT_DIR has the usual depth")
        .to_path_buf();
    let wasm_target_dir = target_root.join("wasm-components");

    for dir in ["wit", "edge/collector", "edge/component", "edge/spin", "edge/delta", "web/sdk"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", workspace.join("Cargo.lock").display());
    println!("cargo:rerun-if-changed={}", workspace.join("Cargo.toml").display());

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--profile",
            "wasm",
            "--target-dir",
        ])
        .arg(&wasm_target_dir);
    for (pkg, _, _) in COMPONENTS {
        cmd.args(["-p", pkg]);
    }
    // Flags meant for the host build must not leak into the wasm build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    // wasmtime compiles wasm SIMD to native vector code; let the guest use it.
    cmd.env("CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS", "-C target-feature=+simd128");
    let status = cmd.status().expect("could not run cargo for the wasm components");
    if !status.success() {
        panic!(
            "building the wasm components failed ({status}). If the error above says the \
             wasm32-wasip2 target is missing, run: rustup target add wasm32-wasip2"
        );
    }

    let mut consts = String::new();
    for (pkg, built, name) in COMPONENTS {
        let src = wasm_target_dir.join("wasm32-wasip2/wasm").join(built);
        let dst = out_dir.join(name);
        std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copy {} for {pkg}: {e}", src.display()));
        let ident = name.trim_end_matches(".wasm").to_uppercase().replace('-', "_");
        consts.push_str(&format!(
            "/// `{name}`, built from this workspace's `{pkg}` for wasm32-wasip2.\n\
             pub const {ident}_WASM: &[u8] = include_bytes!({dst:?});\n\
             /// Where `{name}` was written by the build.\n\
             pub const {ident}_WASM_PATH: &str = {dst:?};\n"
        ));
    }
    std::fs::write(out_dir.join("components.rs"), consts).unwrap();
}
