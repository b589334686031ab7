//! `labmesh bench all`: the issue-16 set (RPC, bus, bank, directory) in
//! one run, shortened so it ends within five minutes, with one table: each
//! project figure next to the baseline measured in the same run, their
//! ratio and the target.

use std::process::ExitCode;
use std::time::Instant;

/// One line of a summary table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub what: String,
    /// The project's figure.
    pub project: String,
    /// The baseline's figure from the same run.
    pub baseline: String,
    /// project / baseline (in the direction the target reads).
    pub ratio: f64,
    /// The target for the ratio.
    pub target: &'static str,
}

impl Row {
    pub fn new(
        what: String,
        project: String,
        baseline: String,
        ratio: f64,
        target: &'static str,
    ) -> Row {
        Row {
            what,
            project,
            baseline,
            ratio,
            target,
        }
    }

    /// Whether the ratio meets the target (`>= x`, `<= x`, `< x`).
    pub fn met(&self) -> Option<bool> {
        let (op, v) = self.target.split_once(' ')?;
        let v: f64 = v.trim_end_matches('x').parse().ok()?;
        Some(match op {
            ">=" => self.ratio >= v,
            "<=" => self.ratio <= v,
            "<" => self.ratio < v,
            ">" => self.ratio > v,
            _ => return None,
        })
    }
}

/// Median of a sample (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s.get(n / 2).copied().unwrap_or(f64::NAN),
        n => {
            let a = s.get(n / 2 - 1).copied().unwrap_or(f64::NAN);
            let b = s.get(n / 2).copied().unwrap_or(f64::NAN);
            (a + b) / 2.0
        }
    }
}

/// Print `rows` as one table.
pub fn print_table(title: &str, rows: &[Row]) {
    println!();
    println!("== {title} ==");
    println!(
        "{:<70} {:>14} {:>14} {:>8} {:>8} {:>4}",
        "measurement", "labmesh", "baseline", "ratio", "target", "met"
    );
    for r in rows {
        let met = match r.met() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        println!(
            "{:<70} {:>14} {:>14} {:>7.2}x {:>8} {:>4}",
            r.what, r.project, r.baseline, r.ratio, r.target, met
        );
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Skip the bank rows (they write 64 MiB datasets several times).
    #[arg(long)]
    no_bank: bool,
}

pub async fn exec(a: Args, ctx: &zmq::Context) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    macro_rules! part {
        ($name:expr, $fut:expr) => {
            let t = Instant::now();
            match $fut.await {
                Ok(r) => rows.extend(r),
                Err(e) => {
                    eprintln!("bench all: {} failed: {e:#}", $name);
                    failed.push($name);
                }
            }
            eprintln!(
                "bench all: {} took {:.1} s",
                $name,
                t.elapsed().as_secs_f64()
            );
        };
    }
    part!("rpc", super::bench::rpc_rows(ctx, 3000));
    part!(
        "bus",
        super::bench_bus::run(ctx, super::bench_bus::Sizes::quick())
    );
    part!("directory", super::bench_directory::run(ctx, 10_000, 10));
    if !a.no_bank {
        part!("bank", super::bench_bank::run(ctx, 256, 5));
    }
    print_table(
        &format!(
            "labmesh bench all ({:.0} s; each figure next to its baseline from the same run)",
            t0.elapsed().as_secs_f64()
        ),
        &rows,
    );
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("bench all: failed parts: {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}
