//! `sluice build`: compiles the `plugins/` workspace to WebAssembly components
//! and copies them to `plugins/dist/`: the Rust crates with cargo, then the
//! Python runtime with componentize-py and a package per Python task
//! ([`python`]), checking what each task imports (`python_imports`).

pub mod python;
mod python_imports;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Rust target tasks are compiled for.
pub const GUEST_TARGET: &str = "wasm32-wasip2";

/// Why building plugins failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// cargo could not be started.
    #[error("cannot run cargo: {0}")]
    Spawn(std::io::Error),
    /// cargo failed.
    #[error("building {dir} failed ({status}){hint}\n{stderr}")]
    Cargo {
        /// The plugins directory.
        dir: String,
        /// cargo's exit status.
        status: std::process::ExitStatus,
        /// A hint about a missing target, when that was the cause.
        hint: &'static str,
        /// cargo's stderr (when captured).
        stderr: String,
    },
    /// A Python task cannot be built.
    #[error("Python task {task}: {message}")]
    Python {
        /// Its directory or `pyproject.toml`.
        task: String,
        /// What went wrong.
        message: String,
    },
    /// No componentize-py of the pinned version.
    #[error(
        "Python tasks need componentize-py {version} ({found}); install it with `python3 -m venv ~/.cache/sluice/componentize-py-{version} && ~/.cache/sluice/componentize-py-{version}/bin/pip install componentize-py=={version}` (what .ci/run does), or name it in ${env}",
        version = python::COMPONENTIZE_PY_VERSION,
        env = python::COMPONENTIZE_PY_ENV
    )]
    NoComponentizePy {
        /// What was found instead.
        found: String,
    },
    /// Copying the components failed.
    #[error("cannot copy components to {dir}: {source}")]
    Copy {
        /// The destination.
        dir: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Where the guest build goes: `$CARGO_TARGET_DIR/wasm-plugins` when set (so a
/// persistent CI cache covers it), else `<plugins>/target`.
pub fn default_target_dir(plugins_dir: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| PathBuf::from(d).join("wasm-plugins"))
        .unwrap_or_else(|| plugins_dir.join("target"))
}

/// Builds every crate of the workspace at `plugins_dir` in release mode and
/// every Python task of `plugins_dir`, and copies the components to
/// `plugins_dir/dist`. With `quiet`, the compilers' output is captured and
/// only shown on failure. Returns the component paths.
pub fn build_plugins(plugins_dir: &Path, quiet: bool) -> Result<Vec<PathBuf>, BuildError> {
    let target_dir = default_target_dir(plugins_dir);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "--release",
            "--target",
            GUEST_TARGET,
            "--manifest-path",
        ])
        .arg(plugins_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .stdin(Stdio::null());
    let (status, stderr) = if quiet {
        let out = command.output().map_err(BuildError::Spawn)?;
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    } else {
        (command.status().map_err(BuildError::Spawn)?, String::new())
    };
    if !status.success() {
        let hint = if stderr.contains("can't find crate for `std`")
            || stderr.contains("target may not be installed")
        {
            "; add the guest target with `rustup target add wasm32-wasip2`"
        } else {
            ""
        };
        return Err(BuildError::Cargo {
            dir: plugins_dir.display().to_string(),
            status,
            hint,
            stderr,
        });
    }
    let built = target_dir.join(GUEST_TARGET).join("release");
    let dist = plugins_dir.join("dist");
    let copy_err = |source| BuildError::Copy {
        dir: dist.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&dist).map_err(copy_err)?;
    let mut copied = Vec::new();
    for entry in std::fs::read_dir(&built).map_err(copy_err)? {
        let path = entry.map_err(copy_err)?.path();
        if let Some(name) = path
            .file_name()
            .filter(|_| path.extension().is_some_and(|e| e == "wasm"))
        {
            let dest = dist.join(name);
            std::fs::copy(&path, &dest).map_err(copy_err)?;
            copied.push(dest);
        }
    }
    let python_tasks = python::find_tasks(plugins_dir)?;
    if !python_tasks.is_empty() {
        let componentize_py = python::componentize_py()?;
        let runtime =
            python::build_runtime(&componentize_py, &target_dir.join("python"), &dist, quiet)?;
        copied.push(runtime.component);
        for task in &python_tasks {
            python::check_imports(task, &runtime.modules)?;
            copied.push(python::build_task(task, &runtime.key, &dist)?);
        }
    }
    copied.sort();
    Ok(copied)
}
