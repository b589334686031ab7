//! `labmesh install-service`: write the systemd units of `deploy/systemd/`
//! (embedded in the binary) with this binary's path and the configuration
//! directory filled in. It does not create users or run systemctl: it
//! prints the next steps (docs/DEPLOY.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

/// The units, as shipped in `deploy/systemd/`.
pub const UNITS: [(&str, &str); 3] = [
    (
        "labmesh-broker.service",
        include_str!("../../deploy/systemd/labmesh-broker.service"),
    ),
    (
        "labmesh-bank.service",
        include_str!("../../deploy/systemd/labmesh-bank.service"),
    ),
    (
        "labmesh-relay@.service",
        include_str!("../../deploy/systemd/labmesh-relay@.service"),
    ),
];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the unit files go.
    #[arg(long, default_value = "/etc/systemd/system")]
    dir: PathBuf,
    /// The labmesh binary the units run (default: this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Where the units look for labmesh.toml, <relay>.toml and env.
    #[arg(long, default_value = "/etc/labmesh")]
    config_dir: PathBuf,
    /// Print the units instead of writing them.
    #[arg(long)]
    print: bool,
    /// Replace unit files that exist (without: refused, exit 1).
    #[arg(long)]
    force: bool,
}

/// `text` with the binary and configuration directory of `a`.
fn fill(text: &str, bin: &Path, config_dir: &Path) -> String {
    text.replace("/usr/local/bin/labmesh", &bin.display().to_string())
        .replace("/etc/labmesh", &config_dir.display().to_string())
}

pub async fn exec(a: Args) -> anyhow::Result<ExitCode> {
    let bin = match a.bin {
        Some(b) => b,
        None => std::env::current_exe().context("the path of this labmesh binary")?,
    };
    if !bin.is_absolute() {
        bail!("--bin {}: systemd needs an absolute path", bin.display());
    }
    if !a.config_dir.is_absolute() {
        bail!(
            "--config-dir {}: systemd needs an absolute path",
            a.config_dir.display()
        );
    }
    let units: Vec<(&str, String)> = UNITS
        .iter()
        .map(|(name, text)| (*name, fill(text, &bin, &a.config_dir)))
        .collect();
    if a.print {
        for (name, text) in &units {
            println!("# {name}\n{text}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    for (name, _) in &units {
        let p = a.dir.join(name);
        if p.exists() && !a.force {
            bail!("{} exists (--force to replace it)", p.display());
        }
    }
    for (name, text) in &units {
        let p = a.dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    let c = a.config_dir.display();
    println!(
        "next: useradd --system --home-dir /var/lib/labmesh --shell /usr/sbin/nologin labmesh\n      \
         mkdir -p {c} && put labmesh.toml (broker, bank) and one <name>.toml per relay there\n      \
         systemctl daemon-reload\n      \
         systemctl enable --now labmesh-broker labmesh-bank labmesh-relay@<name>\n      \
         systemctl reload labmesh-relay@<name>   # after editing {c}/<name>.toml"
    );
    Ok(ExitCode::SUCCESS)
}
