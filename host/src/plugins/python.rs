//! Python tasks: a directory of `plugins/` whose `pyproject.toml` has a
//! `[tool.sluice]` table is compiled by the pinned componentize-py into a
//! component of the `task` world.
//!
//! The sources are staged in `<target>/python/<name>/src` (the task's `.py`
//! files, and the Python SDK and the WIT embedded in this binary, so the SDK
//! always matches the host's contract), every staged entry with the same
//! modification time.
//!
//! componentize-py 0.25.1 does not build reproducibly: the component holds a
//! snapshot of the interpreter's memory after importing the task, and its
//! pre-initialization draws the string-hash secret and the `random` seed from
//! the OS (changing dict layouts across ~14 MB of the snapshot) and sees the
//! modification times of the temporary directories it unpacks the standard
//! library into. Neither can be set from outside. So a build whose inputs
//! (digest of the staged tree and the componentize-py version) equal the last
//! build's reuses its component: unchanged sources keep their bytes, and an
//! unchanged re-deploy records no new version.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::BuildError;

/// The componentize-py release Python tasks are built with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// Environment variable naming the componentize-py executable to use.
pub const COMPONENTIZE_PY_ENV: &str = "SLUICE_COMPONENTIZE_PY";

/// The contract, written next to the sources for componentize-py.
const TASK_WIT: &str = include_str!("../../../wit/task.wit");

/// The Python SDK (`sdk/python/sluice`), staged with every Python task.
const SDK_FILES: &[(&str, &str)] = &[
    (
        "__init__.py",
        include_str!("../../../sdk/python/sluice/__init__.py"),
    ),
    (
        "context.py",
        include_str!("../../../sdk/python/sluice/context.py"),
    ),
    (
        "errors.py",
        include_str!("../../../sdk/python/sluice/errors.py"),
    ),
    (
        "runtime.py",
        include_str!("../../../sdk/python/sluice/runtime.py"),
    ),
];

/// The module componentize-py is pointed at: it imports the task's module
/// (running its `@task`) and exposes the SDK's `WitWorld`.
const APP_MODULE: &str = "sluice_app";

/// Modification time of every staged file and directory
/// (2000-01-01T00:00:00Z): the interpreter's import caches record them.
const STAGED_MTIME_SECS: u64 = 946_684_800;

/// A Python task found in the plugins directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonTask {
    /// Its directory.
    pub dir: PathBuf,
    /// The component's name (`[project] name`): `dist/<name>.wasm`.
    pub name: String,
    /// The module declaring the `@task` function (`[tool.sluice] module`).
    pub module: String,
}

#[derive(serde::Deserialize)]
struct PyProject {
    project: Option<Project>,
    tool: Option<Tool>,
}

#[derive(serde::Deserialize)]
struct Project {
    name: String,
}

#[derive(serde::Deserialize)]
struct Tool {
    sluice: Option<SluiceTable>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SluiceTable {
    module: String,
}

/// The Python tasks of `plugins_dir`: its subdirectories whose
/// `pyproject.toml` has a `[tool.sluice]` table, sorted by directory.
pub fn find_tasks(plugins_dir: &Path) -> Result<Vec<PythonTask>, BuildError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| BuildError::Python {
            task: path,
            message: format!("cannot read it: {source}"),
        }
    };
    let mut tasks = Vec::new();
    for entry in std::fs::read_dir(plugins_dir).map_err(io(plugins_dir))? {
        let dir = entry.map_err(io(plugins_dir))?.path();
        let pyproject = dir.join("pyproject.toml");
        if !pyproject.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&pyproject).map_err(io(&pyproject))?;
        let invalid = |message: String| BuildError::Python {
            task: pyproject.display().to_string(),
            message,
        };
        let parsed: PyProject = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let Some(table) = parsed.tool.and_then(|t| t.sluice) else {
            continue;
        };
        let name = parsed
            .project
            .map(|p| p.name)
            .ok_or_else(|| invalid("[project] name is missing".into()))?;
        if !is_identifier_path(&table.module) {
            return Err(invalid(format!(
                "[tool.sluice] module = {:?} is not a Python module name",
                table.module
            )));
        }
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        {
            return Err(invalid(format!(
                "[project] name = {name:?}: use letters, digits, '-' and '_' (it names the component file)"
            )));
        }
        tasks.push(PythonTask {
            dir,
            name,
            module: table.module,
        });
    }
    tasks.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(tasks)
}

fn is_identifier_path(module: &str) -> bool {
    !module.is_empty()
        && module.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// The componentize-py executable: `$SLUICE_COMPONENTIZE_PY`, else
/// `componentize-py` on `PATH`, else the virtual environment `.ci/run` makes,
/// `~/.cache/sluice/componentize-py-<version>`; it must be the pinned version.
pub fn componentize_py() -> Result<PathBuf, BuildError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os(COMPONENTIZE_PY_ENV) {
        candidates.push(path.into());
    } else {
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path).map(|d| d.join("componentize-py")));
        }
        if let Some(home) = std::env::var_os("HOME") {
            candidates.push(default_venv(Path::new(&home)).join("bin/componentize-py"));
        }
    }
    let mut found = Vec::new();
    for candidate in candidates.into_iter().filter(|c| c.is_file()) {
        let version = Command::new(&candidate)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_else(|e| format!("does not run: {e}"));
        if version == format!("componentize-py {COMPONENTIZE_PY_VERSION}") {
            return Ok(candidate);
        }
        found.push(format!("{} ({version})", candidate.display()));
    }
    Err(BuildError::NoComponentizePy {
        found: if found.is_empty() {
            "none found".into()
        } else {
            format!("found only {}", found.join(", "))
        },
    })
}

/// Where `.ci/run` installs componentize-py: a virtual environment in the
/// user's cache, named for the pinned version.
pub fn default_venv(home: &Path) -> PathBuf {
    home.join(".cache/sluice")
        .join(format!("componentize-py-{COMPONENTIZE_PY_VERSION}"))
}

/// Compiles `task` into `dist/<name>.wasm`, staging its sources under
/// `work/<name>/src`; with `quiet`, componentize-py's output is only shown on
/// failure. When the staged inputs (sources, SDK, WIT, componentize-py
/// version) are those of the last build, that build's component is reused:
/// componentize-py's pre-initialization snapshot is not reproducible (see
/// the module documentation), so unchanged sources keep their bytes, and
/// their content hash, only this way.
pub fn build_task(
    componentize_py: &Path,
    task: &PythonTask,
    work: &Path,
    dist: &Path,
    quiet: bool,
) -> Result<Built, BuildError> {
    let failed = |message: String| BuildError::Python {
        task: task.dir.display().to_string(),
        message,
    };
    // Absolute: componentize-py runs in the staging directory.
    let work = std::path::absolute(work.join(&task.name))
        .map_err(|e| failed(format!("cannot resolve {}: {e}", work.display())))?;
    let stage = work.join("src");
    if stage.exists() {
        std::fs::remove_dir_all(&stage)
            .map_err(|e| failed(format!("cannot clear {}: {e}", stage.display())))?;
    }
    stage_task(task, &stage).map_err(|e| failed(format!("cannot stage sources: {e}")))?;
    let inputs = inputs_digest(&stage)
        .map_err(|e| failed(format!("cannot read the staged sources: {e}")))?;
    let component = work.join(format!("{}.wasm", task.name));
    let recorded = work.join("inputs.sha256");
    let reused = component.is_file()
        && std::fs::read_to_string(&recorded).is_ok_and(|text| text.trim() == inputs);
    if !reused {
        // A component without its inputs' digest is never taken for another's.
        let _ = std::fs::remove_file(&recorded);
        run_componentize_py(componentize_py, &stage, &component, quiet).map_err(failed)?;
        std::fs::write(&recorded, &inputs)
            .map_err(|e| failed(format!("cannot write {}: {e}", recorded.display())))?;
    }
    let dest = dist.join(format!("{}.wasm", task.name));
    std::fs::copy(&component, &dest).map_err(|source| BuildError::Copy {
        dir: dist.display().to_string(),
        source,
    })?;
    Ok(Built {
        component: dest,
        reused,
    })
}

/// A built Python task.
#[derive(Debug)]
pub struct Built {
    /// Its component in `dist/`.
    pub component: PathBuf,
    /// Whether the last build's component was reused (inputs unchanged).
    pub reused: bool,
}

/// Stages what componentize-py reads into `stage`: `app/` (the task's `.py`
/// files, the SDK as `sluice/`, the entry module) and `wit/task.wit`.
fn stage_task(task: &PythonTask, stage: &Path) -> std::io::Result<()> {
    let app = stage.join("app");
    stage_sources(&task.dir, &app)?;
    let sdk = app.join("sluice");
    if sdk.exists() {
        return Err(std::io::Error::other(
            "the task has its own `sluice` package, which would hide the SDK",
        ));
    }
    std::fs::create_dir_all(&sdk)?;
    for (name, text) in SDK_FILES {
        write_staged(&sdk.join(name), text)?;
    }
    write_staged(
        &app.join(format!("{APP_MODULE}.py")),
        &format!(
            "# Generated by `sluice build`: the task's module, then the SDK's entry point.\n\
             import {module}\n\
             from sluice import runtime as _runtime\n\
             from sluice.runtime import WitWorld\n\
             \n\
             if _runtime.declared() is None:\n    \
                 raise RuntimeError(\"module {module} declares no @task function\")\n",
            module = task.module
        ),
    )?;
    std::fs::create_dir_all(stage.join("wit"))?;
    write_staged(&stage.join("wit/task.wit"), TASK_WIT)?;
    set_mtimes(stage)
}

/// sha256 over the componentize-py version and every staged file (relative
/// path and bytes, in path order).
fn inputs_digest(stage: &Path) -> std::io::Result<String> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, files)?;
            } else {
                files.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(stage, &mut files)?;
    files.sort();
    let mut inputs = format!("componentize-py {COMPONENTIZE_PY_VERSION}\n").into_bytes();
    for file in files {
        let relative = file.strip_prefix(stage).unwrap_or(&file);
        let bytes = std::fs::read(&file)?;
        inputs.extend_from_slice(relative.to_string_lossy().as_bytes());
        inputs.extend_from_slice(format!("\0{}\0", bytes.len()).as_bytes());
        inputs.extend_from_slice(&bytes);
    }
    Ok(crate::digest::sha256_hex(&inputs))
}

fn run_componentize_py(
    componentize_py: &Path,
    stage: &Path,
    out: &Path,
    quiet: bool,
) -> Result<(), String> {
    let mut command = Command::new(componentize_py);
    command
        .current_dir(stage)
        .arg("--wit-path")
        .arg("wit")
        .args(["--world", "task", "componentize", "--python-path", "app"])
        .arg("--output")
        .arg(out)
        .arg(APP_MODULE)
        .env_remove("VIRTUAL_ENV")
        .stdin(Stdio::null());
    let cannot_run = |e| format!("cannot run {}: {e}", componentize_py.display());
    let (status, output) = if quiet {
        let out = command.output().map_err(cannot_run)?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status, text)
    } else {
        (command.status().map_err(cannot_run)?, String::new())
    };
    if status.success() {
        Ok(())
    } else {
        Err(format!("componentize-py failed ({status})\n{output}"))
    }
}

/// Copies the `.py` files under `src` (not hidden entries or `__pycache__`)
/// to `dest`, keeping their layout.
fn stage_sources(src: &Path, dest: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dest)?;
    let mut entries = std::fs::read_dir(src)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let text = name.to_string_lossy();
        if text.starts_with('.') || text == "__pycache__" {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            stage_sources(&path, &dest.join(&name))?;
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "py") {
            write_staged(&dest.join(&name), &std::fs::read_to_string(&path)?)?;
        }
    }
    Ok(())
}

fn write_staged(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// Gives every file and directory under `dir` (and `dir`) the fixed
/// modification time: the interpreter's import caches record them.
fn set_mtimes(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            set_mtimes(&path)?;
        } else {
            set_mtime(&path)?;
        }
    }
    set_mtime(dir)
}

fn set_mtime(path: &Path) -> std::io::Result<()> {
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(STAGED_MTIME_SECS);
    std::fs::File::open(path)?.set_modified(mtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_tasks_are_directories_with_a_sluice_table() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |sub: &str, text: &str| {
            std::fs::create_dir_all(dir.path().join(sub)).expect("dir");
            std::fs::write(dir.path().join(sub).join("pyproject.toml"), text).expect("write");
        };
        write(
            "b-task",
            "[project]\nname = \"b-task\"\n[tool.sluice]\nmodule = \"pkg.main\"\n",
        );
        write("other", "[project]\nname = \"not-a-task\"\n");
        std::fs::create_dir_all(dir.path().join("rust-crate")).expect("dir");
        let tasks = find_tasks(dir.path()).expect("found");
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].name, "b-task");
        assert_eq!(tasks[0].module, "pkg.main");

        write(
            "bad",
            "[project]\nname = \"bad\"\n[tool.sluice]\nmodule = \"no-dashes\"\n",
        );
        let error = find_tasks(dir.path()).expect_err("bad module").to_string();
        assert!(error.contains("bad/pyproject.toml"), "{error}");
        assert!(
            error.contains("\"no-dashes\" is not a Python module name"),
            "{error}"
        );
    }

    #[test]
    fn the_inputs_digest_follows_the_staged_sources_not_where_they_are() {
        let task = |dir: &Path, body: &str| {
            std::fs::create_dir_all(dir.join("pkg")).expect("dir");
            std::fs::write(dir.join("main.py"), body).expect("write");
            std::fs::write(dir.join("pkg/util.py"), "X = 1\n").expect("write");
            std::fs::write(dir.join("notes.txt"), "not staged").expect("write");
            PythonTask {
                dir: dir.to_owned(),
                name: "t".into(),
                module: "main".into(),
            }
        };
        let digest = |task: &PythonTask, stage: &Path| {
            stage_task(task, stage).expect("staged");
            inputs_digest(stage).expect("digest")
        };
        let root = tempfile::tempdir().expect("temp dir");
        let a = task(&root.path().join("a"), "print(1)\n");
        let b = task(&root.path().join("b"), "print(1)\n");
        let first = digest(&a, &root.path().join("stage-a"));
        assert_eq!(first, digest(&b, &root.path().join("stage-b")));
        // Files that are not Python sources are not inputs.
        std::fs::write(a.dir.join("notes.txt"), "changed").expect("write");
        assert_eq!(first, digest(&a, &root.path().join("stage-a2")));
        // One byte of a source is.
        let c = task(&root.path().join("c"), "print(2)\n");
        assert_ne!(first, digest(&c, &root.path().join("stage-c")));
        let staged = root.path().join("stage-c/app/sluice_app.py");
        assert!(
            std::fs::read_to_string(staged)
                .expect("entry module")
                .contains("import main\n")
        );
    }
}
