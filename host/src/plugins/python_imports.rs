//! The build's check of a Python task's imports. The runtime serves only
//! what was imported while it was built (the standard library modules of
//! `sluice/preload.py`, built-in and frozen modules) and the task's own
//! files; the runtime lists the former when it is built (`prepare_snapshot`
//! in `sluice/runtime.py`), and `sluice build` refuses a task importing
//! anything else, naming the file and line, instead of leaving it to fail at
//! its first run. Imports whose failure the task handles (in a `try` that
//! catches `ImportError`, or under `if TYPE_CHECKING:`) are left alone.
//!
//! The sources are parsed by the host's `python3` (its `ast` module,
//! `python_imports.py`). A file it cannot parse is a build error when the
//! host's Python is at least the runtime's; when it is older (the file may
//! use newer syntax), the file's imports go unchecked, with a warning.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::python_package::SourceFile;

/// What the runtime can import, as it listed it when it was built.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeModules {
    /// The runtime's Python version (`3.14.0`).
    pub python: String,
    /// Every module a task can import besides its own.
    pub modules: BTreeSet<String>,
}

#[derive(Deserialize)]
struct Found {
    python: String,
    imports: Vec<Import>,
    unparsed: Vec<Unparsed>,
}

#[derive(Deserialize)]
struct Import {
    path: String,
    line: u64,
    module: String,
    guarded: bool,
}

#[derive(Deserialize)]
struct Unparsed {
    path: String,
    line: u64,
    message: String,
}

/// The script listing the imports of sources.
const SCRIPT: &str = include_str!("python_imports.py");

/// Checks that every import of `sources` (the files of the task in `dir`)
/// is one of its own modules or one of `runtime`'s; the error lists each
/// that is not, as `<file>:<line>`.
pub fn check(dir: &Path, sources: &[SourceFile], runtime: &RuntimeModules) -> Result<(), String> {
    let files: serde_json::Map<String, serde_json::Value> = sources
        .iter()
        .map(|s| (s.path.clone(), s.text.clone().into()))
        .collect();
    let found = list_imports(&serde_json::Value::Object(files))?;
    let own: BTreeSet<&str> = sources
        .iter()
        .map(|s| {
            let first = s.path.split('/').next().unwrap_or(&s.path);
            first.strip_suffix(".py").unwrap_or(first)
        })
        .collect();
    let file = |path: &str| dir.join(path).display().to_string();
    let mut problems = Vec::new();
    for unparsed in &found.unparsed {
        let at = format!("{}:{}", file(&unparsed.path), unparsed.line);
        if older(&found.python, &runtime.python) {
            tracing::warn!(
                "{at}: the host's Python {} cannot parse this file ({}), so its imports are not checked; the runtime's Python is {}",
                found.python,
                unparsed.message,
                runtime.python
            );
        } else {
            problems.push(format!("{at}: {}", unparsed.message));
        }
    }
    for import in found.imports.iter().filter(|i| !i.guarded) {
        let top = import.module.split('.').next().unwrap_or(&import.module);
        if !own.contains(top) && !runtime.modules.contains(&import.module) {
            problems.push(format!(
                "{}:{}: imports `{}`, which the Python runtime does not have",
                file(&import.path),
                import.line,
                import.module
            ));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{}\n(a Python task can import its own .py files and the standard library modules of the runtime, listed in sdk/python/sluice/preload.py)",
        problems.join("\n")
    ))
}

/// Runs the listing script on `files` with the host's `python3`.
fn list_imports(files: &serde_json::Value) -> Result<Found, String> {
    let failed = |e: String| format!("cannot list the task's imports with python3: {e}");
    let mut child = Command::new("python3")
        .args(["-I", "-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    let input = files.to_string();
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| failed("no stdin".into()))?;
    // Written from a thread: python3 may fill its stdout before reading all.
    let writer =
        std::thread::spawn(move || std::io::Write::write_all(&mut stdin, input.as_bytes()));
    let output = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    writer
        .join()
        .map_err(|_| failed("the writer thread panicked".into()))?
        .map_err(|e| failed(format!("writing the sources: {e}")))?;
    if !output.status.success() {
        return Err(failed(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| failed(format!("its output: {e}")))
}

/// Whether Python version `host` is older than `runtime` (major.minor).
fn older(host: &str, runtime: &str) -> bool {
    let minor = |v: &str| -> Vec<u64> {
        v.split('.')
            .take(2)
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    minor(host) < minor(runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(python: &str) -> RuntimeModules {
        RuntimeModules {
            python: python.into(),
            modules: ["json", "os", "os.path", "sluice"]
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }

    #[test]
    fn imports_must_be_the_tasks_own_or_the_runtimes() {
        let sources = [
            SourceFile::new(
                "main.py",
                "import json, os.path\nfrom sluice import task\nfrom pkg.util import X\nfrom . import sibling\n\
                 try:\n    import numpy\nexcept ImportError:\n    numpy = None\n\
                 if TYPE_CHECKING:\n    import pandas\n\
                 def f():\n    import requests\n",
            ),
            SourceFile::new("pkg/__init__.py", ""),
            SourceFile::new(
                "pkg/util.py",
                "import os.nope\nX = '''\nimport in_a_string\n'''\n",
            ),
        ];
        let error = check(Path::new("/t"), &sources, &runtime("3.11.0")).expect_err("refused");
        let lines: Vec<&str> = error.lines().collect();
        assert_eq!(
            lines[..2],
            [
                "/t/main.py:12: imports `requests`, which the Python runtime does not have",
                "/t/pkg/util.py:1: imports `os.nope`, which the Python runtime does not have",
            ],
            "{error}"
        );
        assert!(lines[2].contains("sluice/preload.py"), "{error}");
        check(Path::new("/t"), &sources[1..2], &runtime("3.11.0")).expect("no imports");
    }

    #[test]
    fn a_file_the_host_cannot_parse_is_an_error_unless_the_runtime_is_newer() {
        let sources = [SourceFile::new("main.py", "def f(:\n")];
        let error = check(Path::new("/t"), &sources, &runtime("3.0.0")).expect_err("refused");
        assert!(error.starts_with("/t/main.py:1: "), "{error}");
        check(Path::new("/t"), &sources, &runtime("99.0.0")).expect("left to the runtime");
    }
}
