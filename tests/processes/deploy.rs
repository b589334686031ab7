//! Issue 17: deploying relays. `labmesh install-service` writes the
//! systemd units of `deploy/systemd/` for this binary, and systemd's own
//! checker (`systemd-analyze verify`) accepts them; logs under systemd are
//! plain lines without timestamps (journald adds its own) or colour.

use std::time::Duration;

use super::{run_cli_within, BIN};

fn tool_missing(tool: &str) -> anyhow::Result<bool> {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()?
        .status
        .success();
    if found {
        return Ok(false);
    }
    anyhow::ensure!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{tool} is missing and CI=true (.ci/run installs systemd)"
    );
    eprintln!("SKIP: {tool} not installed (apt-get install systemd)");
    Ok(true)
}

#[tokio::test]
async fn install_service_writes_units_that_systemd_accepts() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!(
        "labmesh-units-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc)?;
    let (d, e) = (dir.to_string_lossy(), etc.to_string_lossy());
    let args = [
        "install-service",
        "--dir",
        &d,
        "--bin",
        BIN,
        "--config-dir",
        &e,
    ];
    let out = run_cli_within(None, &args, Duration::from_secs(10)).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let names = [
        "labmesh-broker.service",
        "labmesh-bank.service",
        "labmesh-relay@.service",
    ];
    for n in names {
        let text = std::fs::read_to_string(dir.join(n))?;
        assert!(
            text.contains(&format!("ExecStart={BIN} --config {e}/")),
            "{n}: {text}"
        );
        assert!(!text.contains("/usr/local/bin/labmesh"), "{n}");
    }
    let relay = std::fs::read_to_string(dir.join("labmesh-relay@.service"))?;
    assert!(
        relay.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "{relay}"
    );
    // Existing files are kept unless --force.
    let again = run_cli_within(None, &args, Duration::from_secs(10)).await?;
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);

    if !tool_missing("systemd-analyze")? {
        // A template is checked through an instance of it.
        std::fs::copy(
            dir.join("labmesh-relay@.service"),
            dir.join("labmesh-relay@bench1.service"),
        )?;
        for n in [
            "labmesh-broker.service",
            "labmesh-bank.service",
            "labmesh-relay@bench1.service",
        ] {
            let out = std::process::Command::new("systemd-analyze")
                .arg("verify")
                .arg(dir.join(n))
                .output()?;
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{n}: {err}");
            assert!(
                !err.contains("Unknown") && !err.contains("ignoring"),
                "{n}: {err}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn logs_under_journald_have_no_timestamp_or_colour() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("labmesh-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("odd.toml");
    std::fs::write(&cfg, "[relay]\nstate_intervall = 2\n")?;
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .arg("drivers")
            .env("JOURNAL_STREAM", "8:12345")
            .env("RUST_LOG", "warn")
            .output(),
    )
    .await??;
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("unknown key"))
        .ok_or_else(|| anyhow::anyhow!("no warning: {err}"))?;
    assert!(line.trim_start().starts_with("WARN"), "{line:?}");
    assert!(!line.contains('\u{1b}'), "{line:?}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
