//! The workspace's shape (issue 9): leaf crates stay leaves, and no two
//! public types share a name across crates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `[dependencies]` names of a member's Cargo.toml.
fn deps(member: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join(member).join("Cargo.toml")).unwrap();
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            inside = l == "[dependencies]";
            continue;
        }
        if inside {
            if let Some((name, _)) = l.split_once(['=', '.']) {
                if !name.trim().is_empty() && !name.starts_with('#') {
                    out.push(name.trim().to_string());
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn the_protocol_and_config_crates_build_no_sockets_and_no_runtime() {
    assert_eq!(deps("host/proto"), ["serde", "serde_json", "thiserror"]);
    let config = deps("config");
    for banned in ["zmq", "tokio", "labmesh-wire"] {
        assert!(
            !config.iter().any(|d| d == banned),
            "config depends on {banned}: {config:?}"
        );
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_two_public_types_share_a_name_across_crates() {
    let crates = [
        "config/src",
        "drivers/src",
        "firmware-proto/src",
        "relay/src",
        "host/proto/src",
        "host/wire/src",
        "host/transfer/src",
        "host/broker/src",
        "host/bank/src",
        "host/client/src",
    ];
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in crates {
        let mut files = Vec::new();
        rust_files(&root().join(c), &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for line in text.lines() {
                let l = line.trim_start();
                for kw in ["pub struct ", "pub enum ", "pub trait ", "pub type "] {
                    if let Some(rest) = l.strip_prefix(kw) {
                        let name: String = rest
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if name.is_empty() {
                            continue; // macro templates (`pub enum $name`)
                        }
                        let owners = seen.entry(name).or_default();
                        if !owners.iter().any(|o| o == c) {
                            owners.push(c.to_string());
                        }
                    }
                }
            }
        }
    }
    let clashes: Vec<_> = seen.into_iter().filter(|(_, o)| o.len() > 1).collect();
    assert!(
        clashes.is_empty(),
        "public type names defined in several crates: {clashes:?}"
    );
}
