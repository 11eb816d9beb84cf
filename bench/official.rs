//! Case 1's second baseline: DuckDB's official build, the one a user runs
//! today (the Python wheel, as published on PyPI), running the very
//! statements the crate baseline runs, as a fresh process.
//!
//! The wheel lives in a virtual environment of its own under the cache
//! directory (`~/.cache/sluice/duckdb-official-<version>`), made and filled
//! with `pip` the first time a full run needs it; `--smoke` only uses it when
//! it is already there, so CI never downloads it. Its version must be the
//! version the `duckdb` crate bundles: comparing two releases would measure
//! DuckDB's changes, not its build.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cases::BenchResult;

/// The statements of `sys.argv[3:]`, one at a time, in a DuckDB opened with
/// `threads` and `memory_limit` (bytes) from `sys.argv[1:3]`.
const SCRIPT: &str = "\
import sys, duckdb
threads, memory = int(sys.argv[1]), int(sys.argv[2])
con = duckdb.connect(config={'threads': threads, 'memory_limit': f'{memory}B'})
for statement in sys.argv[3:]:
    con.execute(statement)
";

/// A Python interpreter whose `duckdb` module is the official build of the
/// crate's DuckDB version.
pub struct Official {
    python: PathBuf,
    /// `duckdb.__version__`.
    pub version: String,
}

impl Official {
    /// The interpreter of the wheel for DuckDB `crate_version` (`v2.0.0`):
    /// installed into its virtual environment unless `smoke`, in which case
    /// `None` when it is not there yet.
    pub fn locate(crate_version: &str, smoke: bool) -> BenchResult<Option<Self>> {
        let version = crate_version.trim_start_matches('v');
        let home = std::env::var_os("HOME").ok_or("HOME is not set: no cache directory")?;
        let venv = Path::new(&home)
            .join(".cache/sluice")
            .join(format!("duckdb-official-{version}"));
        let python = venv.join("bin/python3");
        if let Some(found) = Self::at(&python, version)? {
            return Ok(Some(found));
        }
        if smoke {
            return Ok(None);
        }
        println!(
            "   installing DuckDB's official build {version} (PyPI wheel) into {}",
            venv.display()
        );
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            &format!("duckdb=={version}"),
        ]))?;
        match Self::at(&python, version)? {
            Some(found) => Ok(Some(found)),
            None => Err(format!(
                "{} has no duckdb {version} after installing it",
                python.display()
            )
            .into()),
        }
    }

    /// `python` if it exists and imports duckdb `version`; a different version
    /// is an error.
    fn at(python: &Path, version: &str) -> BenchResult<Option<Self>> {
        if !python.is_file() {
            return Ok(None);
        }
        let out = Command::new(python)
            .args(["-c", "import duckdb; print(duckdb.__version__)"])
            .output()?;
        if !out.status.success() {
            return Ok(None);
        }
        let found = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if found != version {
            return Err(format!(
                "{} has duckdb {found}, not the crate's {version}",
                python.display()
            )
            .into());
        }
        Ok(Some(Self {
            python: python.to_owned(),
            version: found,
        }))
    }

    /// The command running `statements` with `threads` and `memory` bytes.
    pub fn command(&self, statements: &[String], threads: u32, memory: u64) -> Command {
        let mut command = Command::new(&self.python);
        command
            .args(["-c", SCRIPT, &threads.to_string(), &memory.to_string()])
            .args(statements);
        command
    }
}

fn run(command: &mut Command) -> BenchResult<()> {
    let status = command.stdout(Stdio::null()).status()?;
    if !status.success() {
        return Err(format!("{command:?} failed: {status}").into());
    }
    Ok(())
}
