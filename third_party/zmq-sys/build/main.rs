//! labmesh-rs change to zmq-sys 0.12.0's build script: build the vendored
//! libzmq with libsodium so that `ZMQ_CURVE` is available.
//!
//! Upstream calls `zeromq_src::Build::new().with_libsodium(None)`, which
//! leaves CURVE out (`zmq::has("curve") == Some(false)`). Here
//! `libsodium-sys-stable` (a normal dependency, `links = "sodium"`) builds
//! libsodium from the source it ships (no network, no system package) and
//! exports its include and library directories as `DEP_SODIUM_INCLUDE` and
//! `DEP_SODIUM_LIB`; those go to `with_libsodium(Some(..))`, which defines
//! `ZMQ_USE_LIBSODIUM` and `ZMQ_HAVE_CURVE` and links `libsodium.a`.

use std::env;
use std::path::PathBuf;

fn dep_dir(var: &str) -> PathBuf {
    println!("cargo:rerun-if-env-changed={}", var);
    match env::var_os(var) {
        Some(v) => PathBuf::from(v),
        None => panic!(
            "{} is not set: libsodium-sys-stable's build script did not report where it \
             built libsodium (SODIUM_LIB_DIR or SODIUM_USE_PKG_CONFIG set? then its include \
             directory is unknown; unset them to build libsodium from the bundled source)",
            var
        ),
    }
}

/// Add `-w` to the C++ flags the cc crate will use for libzmq. This crate
/// is a path dependency, so cargo replays its build output's warnings on
/// every build of the workspace; libzmq's own compiler warnings are not
/// ours to fix. cc takes the first of these variables that is set.
fn quiet_cxx() {
    let target = env::var("TARGET").unwrap_or_default();
    let under = target.replace('-', "_");
    let names = [
        format!("CXXFLAGS_{}", target),
        format!("CXXFLAGS_{}", under),
        "TARGET_CXXFLAGS".to_string(),
        "CXXFLAGS".to_string(),
    ];
    let current = names
        .iter()
        .filter_map(|n| env::var(n).ok())
        .next()
        .unwrap_or_default();
    env::set_var(format!("CXXFLAGS_{}", under), format!("{} -w", current).trim());
}

fn main() {
    println!("cargo:rerun-if-changed=build/main.rs");
    println!("cargo:rerun-if-env-changed=PROFILE");
    quiet_cxx();

    let include = dep_dir("DEP_SODIUM_INCLUDE");
    let lib = dep_dir("DEP_SODIUM_LIB");
    zeromq_src::Build::new()
        .with_libsodium(Some(zeromq_src::LibLocation::new(lib, include)))
        .build();
}
