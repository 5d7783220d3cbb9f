//! Builds the XDP program (`../ebpf/`, its own workspace) for the BPF target with
//! aya-build, which needs a nightly toolchain with rust-src and `bpf-linker`, and copies the
//! object to `target/bpfel-unknown-none/<profile>/omni-ebpf`, where the original README
//! said `cargo build -p omni-ebpf-core` leaves it.
//!
//! Without them the rest of the workspace still builds: the loader then reports, at run
//! time, how to get the program. `OMNI_XDP_REQUIRED=1` (CI sets it) turns that into a build
//! error. With the tools present, a failing program build is always an error.

use std::path::PathBuf;
use std::process::Command;

const REQUIRED: &str = "OMNI_XDP_REQUIRED";

fn main() {
    println!("cargo:rerun-if-env-changed={REQUIRED}");
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rustc-check-cfg=cfg(omni_xdp_program)");
    let required = std::env::var(REQUIRED).is_ok_and(|v| v == "1" || v == "true");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let ebpf = manifest.join("../ebpf");
    for p in ["src", "Cargo.toml", "Cargo.lock", "../common/src", "../common/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", ebpf.join(p).display());
    }
    if let Some(missing) = missing_tools() {
        let msg = format!(
            "the XDP program is not built (missing: {missing}). Install them with `scripts/setup.sh` \
             (or `rustup toolchain install nightly --component rust-src` and `cargo install \
             bpf-linker`), then rebuild. The XDP backend refuses to start until then."
        );
        if required {
            panic!("{REQUIRED} is set and {msg}");
        }
        println!("cargo:warning={msg}");
        return;
    }
    // aya-build runs `cargo build --package ...` where this process stands: stand in the
    // program's own workspace.
    std::env::set_current_dir(&ebpf).expect("ebpf/ exists");
    let package = aya_build::Package {
        name: "omni-xdp-ebpf",
        root_dir: ebpf.to_str().expect("UTF-8 path"),
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::default()) {
        panic!("building the XDP program failed: {e:#}");
    }
    println!("cargo:rustc-cfg=omni_xdp_program");
    copy_to_target_dir();
}

/// `OUT_DIR` is `<target>/[<triple>/]<profile>/build/<package>-<hash>/out`: the object goes
/// to `<target>/bpfel-unknown-none/<profile>/omni-ebpf`, a stable path outside the hashed
/// directories (for tools and the Debian package). A copy that cannot be made is only a
/// warning: the loader embeds the object from `OUT_DIR` either way.
fn copy_to_target_dir() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let Some(profile_dir) = out.ancestors().nth(3) else { return };
    let Some(profile) = profile_dir.file_name() else { return };
    // With --target, the profile directory sits one level deeper, under the triple.
    let mut target = profile_dir.parent();
    if std::env::var("TARGET").ok() != std::env::var("HOST").ok() {
        target = target.and_then(|t| t.parent());
    }
    let Some(target) = target else { return };
    let dir = target.join("bpfel-unknown-none").join(profile);
    let copied = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::copy(out.join("omni-xdp"), dir.join("omni-ebpf")));
    if let Err(e) = copied {
        println!("cargo:warning=cannot copy the XDP object to {}: {e}", dir.display());
    }
}

/// What the eBPF build needs and this machine lacks, if anything.
fn missing_tools() -> Option<String> {
    let mut missing = Vec::new();
    if !on_path("bpf-linker") {
        missing.push("bpf-linker");
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match sysroot {
        None => missing.push("a nightly Rust toolchain (rustup)"),
        Some(s) if !s.join("lib/rustlib/src/rust/library/core").is_dir() => {
            missing.push("rust-src for the nightly toolchain")
        }
        Some(_) => {}
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}
