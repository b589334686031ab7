//! `labmesh keygen`: print a CURVE key pair under the names nodes read.

use std::process::ExitCode;

use clap::ValueEnum;

/// Output formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// `ZMQ_SERVER_PUBLICKEY="…"` lines (or the client pair with --client).
    Env,
    /// `{"public": "…", "secret": "…"}`, as labmesh's lmh-gen-curve.
    Json,
    /// A `[security]` table.
    Toml,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format.
    #[arg(long, value_enum, default_value = "env")]
    pub format: Format,
    /// Name the pair as a client pair (ZMQ_CLIENT_*, client_*_key).
    #[arg(long)]
    pub client: bool,
}

pub async fn exec(a: Args) -> anyhow::Result<ExitCode> {
    let pair = crate::security::generate()?;
    let (public, secret) = (pair.public.z85(), pair.secret.z85());
    let side = if a.client { "CLIENT" } else { "SERVER" };
    let lower = side.to_lowercase();
    match a.format {
        Format::Env => {
            println!("ZMQ_{side}_PUBLICKEY=\"{public}\"");
            println!("ZMQ_{side}_SECRETKEY=\"{secret}\"");
        }
        Format::Json => {
            let v = serde_json::json!({"public": public, "secret": secret});
            println!("{v}");
        }
        Format::Toml => {
            // TOML basic strings: Z85 has no '"' or '\\', so no escaping.
            println!("[security]");
            println!("{lower}_public_key = \"{public}\"");
            println!("{lower}_secret_key = \"{secret}\"");
        }
    }
    Ok(ExitCode::SUCCESS)
}
