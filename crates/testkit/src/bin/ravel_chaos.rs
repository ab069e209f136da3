//! `ravel_chaos`: the soak runner of the chaos suite. It runs scenarios of the shared engine
//! (`ravel_testkit::chaos::run`, the same one the CI tests use) for as long as asked, prints each
//! run's figures, and exits non-zero when any run found a violation, a lost write or a liveness
//! or convergence problem. It only parses flags and calls the engine.
//!
//!     ravel_chaos [--duration SECS] [--seed N] [--scenario all|kill|pause|partition|admin|
//!                 migration|stale-follower|admin-group] [--admin-bin PATH] [--node-bin PATH]
//!
//! The binaries default to `ravel_admin` and `ravel_node` next to this program
//! (`target/debug/` after `cargo build`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ravel_testkit::chaos::{self, ChaosOptions, Scenario};

/// Default time under faults of a run.
const DEFAULT_DURATION_SECS: u64 = 600;

struct Args {
    duration: Duration,
    seed: u64,
    scenario: Scenario,
    admin_bin: PathBuf,
    node_bin: PathBuf,
}

fn usage() -> &'static str {
    "usage: ravel_chaos [--duration SECS] [--seed N] [--scenario all|kill|pause|partition|admin|\
     migration|stale-follower|admin-group] [--admin-bin PATH] [--node-bin PATH]"
}

fn parse_args() -> Result<Args> {
    let here = std::env::current_exe().context("locating ravel_chaos")?;
    let dir = here.parent().map_or_else(PathBuf::new, Path::to_path_buf);
    let mut args = Args {
        duration: Duration::from_secs(DEFAULT_DURATION_SECS),
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs()),
        scenario: Scenario::All,
        admin_bin: dir.join("ravel_admin"),
        node_bin: dir.join("ravel_node"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{}", usage());
            std::process::exit(0);
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{}", usage()))?;
        match flag.as_str() {
            "--duration" => {
                args.duration = Duration::from_secs(value.parse().context("--duration SECS")?);
            }
            "--seed" => args.seed = value.parse().context("--seed N")?,
            "--scenario" => args.scenario = value.parse()?,
            "--admin-bin" => args.admin_bin = value.into(),
            "--node-bin" => args.node_bin = value.into(),
            other => bail!("unknown flag {other}\n{}", usage()),
        }
    }
    for bin in [&args.admin_bin, &args.node_bin] {
        if !bin.is_file() {
            bail!(
                "{} not found: run `cargo build` first or pass --admin-bin/--node-bin",
                bin.display()
            );
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ravel_chaos: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ravel_chaos: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let options = ChaosOptions::new(
        args.scenario,
        args.seed,
        args.duration,
        &args.admin_bin,
        &args.node_bin,
    );
    match runtime.block_on(chaos::run(&options)) {
        Ok(report) => {
            println!("{report}");
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("ravel_chaos: the run could not complete: {e:#}");
            ExitCode::from(2)
        }
    }
}
