//! Headless Chromium for tests that check a page as a browser renders it: the DOM after the
//! page's scripts ran (`--dump-dom`) and a screenshot.
//!
//! Each run gets a fresh profile directory (concurrent runs would otherwise fight over one
//! profile's lock) and is killed if it takes longer than [`BROWSER_TIMEOUT`]. Virtual time lets
//! the page's timers and fetches run for [`VIRTUAL_TIME_BUDGET_MS`] before the result is taken,
//! without the test waiting that long in real time when the page is idle.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Names tried on `PATH`, in order, when `RAVEL_CHROMIUM` does not name a binary.
const CHROMIUM_NAMES: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];

/// Page time (timers, refreshes) a run lets pass before it dumps or shoots the page.
pub const VIRTUAL_TIME_BUDGET_MS: u64 = 5_000;

/// Real time after which a browser run is killed and the test fails.
pub const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

/// The Chromium binary to use: `RAVEL_CHROMIUM` if set, else the first of [`CHROMIUM_NAMES`]
/// found on `PATH`; `None` when there is none.
#[must_use]
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(explicit) = std::env::var_os("RAVEL_CHROMIUM") {
        return Some(PathBuf::from(explicit));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| CHROMIUM_NAMES.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// The page at `url` as serialized HTML after its scripts ran.
pub async fn dump_dom(chromium: &Path, url: &str) -> Result<String> {
    let stdout = run(chromium, &["--dump-dom".to_owned(), url.to_owned()]).await?;
    String::from_utf8(stdout).context("the dumped DOM is not UTF-8")
}

/// Saves a PNG screenshot of the page at `url`, `width`×`height` pixels, to `out`.
pub async fn screenshot(
    chromium: &Path,
    url: &str,
    out: &Path,
    (width, height): (u32, u32),
) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(out);
    run(
        chromium,
        &[
            format!("--screenshot={}", out.display()),
            format!("--window-size={width},{height}"),
            "--hide-scrollbars".to_owned(),
            url.to_owned(),
        ],
    )
    .await?;
    let png = std::fs::read(out).with_context(|| format!("reading {}", out.display()))?;
    if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
        bail!("{} is not a PNG", out.display());
    }
    Ok(())
}

/// Runs headless Chromium with `args` after the common flags; returns its standard output.
async fn run(chromium: &Path, args: &[String]) -> Result<Vec<u8>> {
    let profile = tempfile::tempdir().context("creating a browser profile directory")?;
    let mut command = tokio::process::Command::new(chromium);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(BROWSER_TIMEOUT, command.output())
        .await
        .with_context(|| format!("{} took over {BROWSER_TIMEOUT:?}", chromium.display()))?
        .with_context(|| format!("starting {}", chromium.display()))?;
    if !output.status.success() {
        bail!(
            "{} {args:?} failed ({}): {}",
            chromium.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}
