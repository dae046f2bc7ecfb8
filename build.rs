//! Links the `mproc` binary's unwinder statically on Linux with glibc.
//!
//! Rust's standard library asks for the shared `libgcc_s` (`-lgcc_s`), whose
//! five mappings every `fork` copies and every child's exit tears down:
//! about 10 µs of a 130 µs `Process` start+join on a 2-vCPU guest. The
//! linker finds the `libgcc_s.so` written here first, a script that names
//! the static unwinder (`libgcc_eh.a`, what `gcc -static-libgcc` links)
//! instead. Only this package's binaries are affected: a program that uses
//! the library links as it always did.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Set below when the binary links the static unwinder: its test asks.
    println!("cargo:rustc-check-cfg=cfg(mproc_static_unwinder)");
    let cfg = |key: &str| env::var(key).unwrap_or_default();
    let static_crt = cfg("CARGO_CFG_TARGET_FEATURE").split(',').any(|f| f == "crt-static");
    // A static build already links libgcc_eh; other systems have no
    // libgcc_s to replace.
    if cfg("CARGO_CFG_TARGET_OS") != "linux" || cfg("CARGO_CFG_TARGET_ENV") != "gnu" || static_crt {
        return;
    }
    // Only where the compiler that links has the static unwinder (it
    // prints the bare name when it has no such file): the configured
    // linker, or else `cc`, which is rustc's for this target only when it
    // is also the host.
    let linker = match env::var_os("RUSTC_LINKER") {
        Some(linker) => linker,
        None if cfg("TARGET") == cfg("HOST") => "cc".into(),
        None => return,
    };
    let found = Command::new(linker).arg("-print-file-name=libgcc_eh.a").output();
    if !found.is_ok_and(|o| {
        o.status.success() && Path::new(String::from_utf8_lossy(&o.stdout).trim()).is_absolute()
    }) {
        return;
    }
    let Some(out) = env::var_os("OUT_DIR") else { return };
    let dir = PathBuf::from(out).join("static-unwinder");
    fs::create_dir_all(&dir).expect("create OUT_DIR/static-unwinder");
    fs::write(
        dir.join("libgcc_s.so"),
        "/* mproc's build.rs: the static unwinder for -lgcc_s */\nGROUP ( -lgcc_eh )\n",
    )
    .expect("write OUT_DIR/static-unwinder/libgcc_s.so");
    // GNU ld (and gold, lld, mold) search -L directories in order, ours
    // before the C compiler's own, for every -l wherever it appears.
    println!("cargo:rustc-link-arg-bins=-L{}", dir.display());
    println!("cargo:rustc-cfg=mproc_static_unwinder");
}
