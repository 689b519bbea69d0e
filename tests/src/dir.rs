//! A temporary directory per test: removed when the test passes, kept (and its path printed)
//! when the test panicked so the logs of every child process can be read afterwards.
//!
//! Set `BFTCD_KEEP_TEST_DIRS=1` to keep the directories of passing tests too.
//!
//! Note: a test that *returns* `Err` instead of panicking does not unwind, so its directory
//! would be removed. The harness therefore panics on errors; tests should too (`expect`).

use std::path::{Path, PathBuf};

/// Environment variable that keeps every test directory, passed or failed.
pub const KEEP_DIRS_ENV: &str = "BFTCD_KEEP_TEST_DIRS";

/// A per-test temporary directory. Declare it *before* the processes that live in it, so that
/// they are dropped (killed) first.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// Creates `<tmp>/bftcd-<name>-XXXXXX`.
    pub fn new(name: &str) -> TestDir {
        let clean: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dir = tempfile::Builder::new()
            .prefix(&format!("bftcd-{clean}-"))
            .tempdir()
            .expect("create a temporary test directory");
        let path = dir.path().to_path_buf();
        TestDir {
            dir: Some(dir),
            path,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Keeps the directory even if the test passes; returns its path.
    pub fn keep(&mut self) -> PathBuf {
        if let Some(d) = self.dir.take() {
            let _ = d.keep();
        }
        self.path.clone()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let keep_env = std::env::var(KEEP_DIRS_ENV)
            .map(|v| !v.is_empty() && v != "0")
            .unwrap_or(false);
        if std::thread::panicking() || keep_env {
            if let Some(d) = self.dir.take() {
                let p = d.keep();
                eprintln!(
                    "bftcd-tests: test directory kept (logs inside): {}",
                    p.display()
                );
            } else {
                eprintln!(
                    "bftcd-tests: test directory kept (logs inside): {}",
                    self.path.display()
                );
            }
        }
        // Otherwise TempDir's own Drop removes it.
    }
}

/// The last `lines` lines of a text file (lossy UTF-8), for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Marker line the harness writes into a log file before each start of a process.
pub const START_MARKER: &str = "----- bftcd-tests: starting";

/// The text a log file received since the harness last started its process.
pub fn log_of_last_run(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    match text.rfind(START_MARKER) {
        Some(i) => text[i..].to_string(),
        None => text.into_owned(),
    }
}
