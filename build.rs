//! Links the functions the agent runs next to each other (BENCHMARKS.md, finding 21).
//!
//! The agent's code is most of its resident memory, and the kernel maps 64 KiB around every page
//! of it that is first run, so a few hundred hot functions spread over the text segment keep
//! nearly all of it resident. `build/qscale.order` lists, in order, the functions a run of the
//! benchmark executed (made by `scripts/order-file`); lld places them first. A name the build
//! does not have (another toolchain, other features) is skipped, so a stale list costs memory,
//! never correctness.
//!
//! Only for release builds for x86_64 Linux with GNU libc, where rustc links with lld by
//! default; `QSCALE_NO_ORDER_FILE=1` turns it off for a linker without `--symbol-ordering-file`.

use std::path::Path;

fn main() {
    println!("cargo::rerun-if-changed=build/qscale.order");
    println!("cargo::rerun-if-env-changed=QSCALE_NO_ORDER_FILE");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let wanted = var("PROFILE") == "release"
        && var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        && var("QSCALE_NO_ORDER_FILE").is_empty();
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join("build/qscale.order");
    if wanted && order.is_file() {
        println!(
            "cargo::rustc-link-arg-bin=qscale=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo::rustc-link-arg-bin=qscale=-Wl,--no-warn-symbol-ordering");
    }
}
