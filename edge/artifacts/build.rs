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

    // Rebuild when the lockfile or the workspace manifest changes; which sources the
    // components are made of comes from cargo's own dep-info, after the nested build.
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

    // Every source file (and WIT file) the components were built from, as cargo's
    // dep-info (`<artifact>.d`: `target: dep dep ...`) lists them: a new crate or folder
    // the components come to depend on is watched without editing this file.
    for (pkg, built, _) in COMPONENTS {
        let dep_info = wasm_target_dir.join("wasm32-wasip2/wasm").join(built).with_extension("d");
        let text = std::fs::read_to_string(&dep_info)
            .unwrap_or_else(|e| panic!("reading cargo's dep-info {} for {pkg}: {e}", dep_info.display()));
        for dep in dep_info_paths(&text) {
            if dep.starts_with(workspace) {
                println!("cargo:rerun-if-changed={}", dep.display());
            }
        }
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

/// The prerequisites of a make-style dep-info file (`target: a b\ c`), spaces in paths
/// escaped with a backslash.
fn dep_info_paths(text: &str) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for line in text.lines() {
        let Some((_, deps)) = line.split_once(": ") else {
            continue;
        };
        let mut current = String::new();
        let mut chars = deps.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => current.extend(chars.next()),
                ' ' => {
                    if !current.is_empty() {
                        paths.push(PathBuf::from(std::mem::take(&mut current)));
                    }
                }
                c => current.push(c),
            }
        }
        if !current.is_empty() {
            paths.push(current.into());
        }
    }
    paths
}
