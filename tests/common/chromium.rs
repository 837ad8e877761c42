//! Headless Chromium for the tests that check HTML as a browser builds it (tests/eval.rs,
//! tests/experiment.rs, daemon/tests/rating.rs, which includes this file by path).

use std::path::PathBuf;
use std::process::Command;

/// The Chromium binary: DPOIMG_CHROMIUM, else the usual names on PATH.
fn binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DPOIMG_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for name in [
        "chromium-headless-shell",
        "chromium",
        "chromium-browser",
        "google-chrome",
        "headless_shell",
    ] {
        for dir in std::env::split_paths(&path) {
            let c = dir.join(name);
            if c.is_file() {
                return Some(c);
            }
        }
    }
    None
}

/// The DOM Chromium builds from `url` (after parsing and scripts, as a browser sees it), or None
/// with a loud message naming `what` was skipped when Chromium is absent outside CI. In CI its
/// absence fails. `extra` adds flags (e.g. `--virtual-time-budget=60000` to let fetches settle).
pub fn dump_dom(url: &str, what: &str, extra: &[&str]) -> Option<String> {
    let Some(bin) = binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "headless Chromium is required in CI: run scripts/install-chromium.sh"
        );
        eprintln!("\n*** SKIPPING the headless-Chromium check of {what}: no chromium found (run scripts/install-chromium.sh) ***\n");
        return None;
    };
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(&bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `file://` URL of a local HTML file.
pub fn file_url(html: &std::path::Path) -> String {
    format!("file://{}", html.canonicalize().unwrap().display())
}
