//! Python tasks: a directory of `plugins/` whose `pyproject.toml` has a
//! `[tool.sluice]` table is a Python task. `sluice build` makes two things:
//!
//! - one runtime component, `dist/python-runtime/<key>.wasm`, compiled by
//!   the pinned componentize-py from the Python SDK and the WIT embedded in
//!   this binary (world `python-task`): the interpreter with the SDK and the
//!   standard library of `sluice/preload.py` imported, and no task. Every
//!   Python task runs on it, so the host compiles it once;
//! - per task, `dist/<name>.pytask`: a [`PythonPackage`] of the task's `.py`
//!   files (sorted by path, no modification times) and the runtime's key.
//!   It is a pure function of those, so building unchanged sources gives the
//!   same bytes, and an unchanged re-deploy records no new version.
//!
//! componentize-py 0.25.1 does not build reproducibly: the component holds a
//! snapshot of the interpreter's memory, and its pre-initialization draws the
//! string-hash secret and the `random` seed from the OS (changing dict
//! layouts across ~14 MB of the snapshot) and sees the modification times of
//! the temporary directories it unpacks the standard library into. Neither
//! can be set from outside. So the runtime is named by its key, the digest
//! of its staged inputs (SDK, WIT, componentize-py version), not by its
//! bytes; a build keeps the runtime built earlier for its key, and a home
//! runs the first component deployed for a key (`Home::python_runtime`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::BuildError;
use super::python_imports::{self, RuntimeModules};
use crate::python_package::{self, PythonPackage, SourceFile};

/// The componentize-py release Python tasks are built with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// Environment variable naming the componentize-py executable to use.
pub const COMPONENTIZE_PY_ENV: &str = "SLUICE_COMPONENTIZE_PY";

/// The contract, written next to the sources for componentize-py.
const TASK_WIT: &str = include_str!("../../../wit/task.wit");

/// The runtime's own import (`python-code`) and world (`python-task`).
const PYTHON_WIT: &str = include_str!("../../../wit/python.wit");

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
        "loader.py",
        include_str!("../../../sdk/python/sluice/loader.py"),
    ),
    (
        "preload.py",
        include_str!("../../../sdk/python/sluice/preload.py"),
    ),
    (
        "runtime.py",
        include_str!("../../../sdk/python/sluice/runtime.py"),
    ),
];

/// The module componentize-py is pointed at: it imports the SDK (and with it
/// the standard library the runtime offers) and exposes its `WitWorld`.
const APP_MODULE: &str = "sluice_runtime";

/// The WIT world of the runtime component.
const RUNTIME_WORLD: &str = "python-task";

/// What the runtime's entry module has `prepare_snapshot` write beside it
/// while componentize-py pre-initializes it: what a task can import.
const MODULES_FILE: &str = "runtime-modules.json";

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

/// Builds the runtime component into `dist/python-runtime/<key>.wasm`, its
/// key being the digest of its staged inputs (SDK, WIT, componentize-py
/// version; staged under `work/runtime/src`), with the list of what it can
/// import beside it (`<key>.json`), and removes the other runtimes there
/// (every task is rebuilt for this one). With `quiet`,
/// componentize-py's output is only shown on failure. A runtime already
/// built for the key is kept: componentize-py would build other bytes for
/// it (see the module documentation).
pub fn build_runtime(
    componentize_py: &Path,
    work: &Path,
    dist: &Path,
    quiet: bool,
) -> Result<Runtime, BuildError> {
    let failed = |message: String| BuildError::Python {
        task: "the Python runtime".into(),
        message,
    };
    // Absolute: componentize-py runs in the staging directory.
    let work = std::path::absolute(work.join("runtime"))
        .map_err(|e| failed(format!("cannot resolve {}: {e}", work.display())))?;
    let stage = work.join("src");
    if stage.exists() {
        std::fs::remove_dir_all(&stage)
            .map_err(|e| failed(format!("cannot clear {}: {e}", stage.display())))?;
    }
    stage_runtime(&stage).map_err(|e| failed(format!("cannot stage the SDK: {e}")))?;
    let key = inputs_digest(&stage)
        .map_err(|e| failed(format!("cannot read the staged sources: {e}")))?;
    let dir = dist.join(python_package::RUNTIME_DIR);
    let dest = dir.join(format!("{key}.wasm"));
    let copy_err = |source| BuildError::Copy {
        dir: dir.display().to_string(),
        source,
    };
    let modules_path = dir.join(format!("{key}.json"));
    let reused = dest.is_file() && modules_path.is_file();
    if !reused {
        let component = work.join("runtime.wasm");
        run_componentize_py(componentize_py, &stage, &component, quiet).map_err(failed)?;
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| failed(format!("cannot read {}: {e}", path.display())))
        };
        let bytes = read(&component)?;
        let modules = read(&stage.join("app").join(MODULES_FILE))?;
        std::fs::create_dir_all(&dir).map_err(copy_err)?;
        crate::home::write_atomically(&modules_path, &modules).map_err(copy_err)?;
        crate::home::write_atomically(&dest, &bytes).map_err(copy_err)?;
    }
    let modules = std::fs::read(&modules_path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
        .map_err(|e| failed(format!("{}: {e}", modules_path.display())))?;
    for entry in std::fs::read_dir(&dir).map_err(copy_err)? {
        let path = entry.map_err(copy_err)?.path();
        if path != dest
            && path != modules_path
            && path.extension().is_some_and(|e| e == "wasm" || e == "json")
        {
            std::fs::remove_file(&path).map_err(copy_err)?;
        }
    }
    Ok(Runtime {
        component: dest,
        key,
        modules,
        reused,
    })
}

/// The built runtime component.
#[derive(Debug)]
pub struct Runtime {
    /// `dist/python-runtime/<key>.wasm`.
    pub component: PathBuf,
    /// Its key: sha256 of its build inputs.
    pub key: String,
    /// What a task can import from it.
    pub modules: RuntimeModules,
    /// Whether a runtime built earlier for the key was kept.
    pub reused: bool,
}

/// Checks that `task` imports only its own modules and `runtime`'s (see
/// `python_imports`).
pub fn check_imports(task: &PythonTask, runtime: &RuntimeModules) -> Result<(), BuildError> {
    let failed = |message: String| BuildError::Python {
        task: task.dir.display().to_string(),
        message,
    };
    let mut sources = Vec::new();
    collect_sources(&task.dir, "", &mut sources)
        .map_err(|e| failed(format!("cannot read its sources: {e}")))?;
    python_imports::check(&task.dir, &sources, runtime).map_err(failed)
}

/// Writes `task`'s package, run by the runtime of key `runtime_key`, to
/// `dist/<name>.pytask`, and removes a `dist/<name>.wasm` an earlier
/// Sluice built for it. Returns the package's path.
pub fn build_task(
    task: &PythonTask,
    runtime_key: &str,
    dist: &Path,
) -> Result<PathBuf, BuildError> {
    let failed = |message: String| BuildError::Python {
        task: task.dir.display().to_string(),
        message,
    };
    let package = task_package(task, runtime_key).map_err(failed)?;
    let dest = dist.join(format!("{}.{}", task.name, python_package::EXTENSION));
    let copy_err = |source| BuildError::Copy {
        dir: dist.display().to_string(),
        source,
    };
    crate::home::write_atomically(&dest, &package.to_bytes()).map_err(copy_err)?;
    match std::fs::remove_file(dist.join(format!("{}.wasm", task.name))) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(copy_err(e)),
        _ => {}
    }
    Ok(dest)
}

/// The package of `task`: its `.py` files and runtime key `runtime_key`.
fn task_package(task: &PythonTask, runtime_key: &str) -> Result<PythonPackage, String> {
    let mut sources = Vec::new();
    collect_sources(&task.dir, "", &mut sources)
        .map_err(|e| format!("cannot read its sources: {e}"))?;
    if sources
        .iter()
        .any(|s| s.path == "sluice.py" || s.path.starts_with("sluice/"))
    {
        return Err("the task has its own `sluice` module, which would hide the SDK".into());
    }
    let file = task.module.replace('.', "/");
    let (module, package) = (format!("{file}.py"), format!("{file}/__init__.py"));
    if !sources
        .iter()
        .any(|s| s.path == module || s.path == package)
    {
        return Err(format!(
            "[tool.sluice] module = {:?}: there is no {module} or {package} in the task's directory",
            task.module
        ));
    }
    Ok(PythonPackage::new(runtime_key, &task.module, sources))
}

/// The `.py` files under `dir` (not hidden entries or `__pycache__`), with
/// their paths under `prefix`.
fn collect_sources(dir: &Path, prefix: &str, sources: &mut Vec<SourceFile>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(std::io::Error::other(format!(
                "{}: a file name that is not UTF-8",
                entry.path().display()
            )));
        };
        if name.starts_with('.') || name == "__pycache__" {
            continue;
        }
        let path = format!("{prefix}{name}");
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_sources(&entry.path(), &format!("{path}/"), sources)?;
        } else if kind.is_file() && name.ends_with(".py") {
            let text = std::fs::read_to_string(entry.path()).map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}: {e}", entry.path().display()))
            })?;
            sources.push(SourceFile { path, text });
        }
    }
    Ok(())
}

/// Stages what componentize-py reads into `stage`: `app/` (the SDK as
/// `sluice/`, the entry module) and `wit/`.
fn stage_runtime(stage: &Path) -> std::io::Result<()> {
    let sdk = stage.join("app/sluice");
    std::fs::create_dir_all(&sdk)?;
    for (name, text) in SDK_FILES {
        std::fs::write(sdk.join(name), text)?;
    }
    std::fs::write(
        stage.join(format!("app/{APP_MODULE}.py")),
        format!(
            "# Generated by `sluice build`: the Python runtime of Sluice tasks.\n\
             import os\n\
             \n\
             from sluice.runtime import WitWorld, prepare_snapshot  # noqa: F401 - the world's export\n\
             \n\
             prepare_snapshot(os.path.join(os.path.dirname(__file__), \"{MODULES_FILE}\"))\n"
        ),
    )?;
    std::fs::create_dir_all(stage.join("wit"))?;
    std::fs::write(stage.join("wit/task.wit"), TASK_WIT)?;
    std::fs::write(stage.join("wit/python.wit"), PYTHON_WIT)?;
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
        .args([
            "--world",
            RUNTIME_WORLD,
            "componentize",
            "--python-path",
            "app",
        ])
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
    fn a_package_follows_the_sources_not_where_they_are_or_when() {
        let task = |dir: &Path, body: &str| {
            std::fs::create_dir_all(dir.join("pkg/__pycache__")).expect("dir");
            std::fs::write(dir.join("main.py"), body).expect("write");
            std::fs::write(dir.join("pkg/util.py"), "X = 1\n").expect("write");
            std::fs::write(dir.join("pkg/__pycache__/util.py"), "stale").expect("write");
            std::fs::write(dir.join("notes.txt"), "not a source").expect("write");
            PythonTask {
                dir: dir.to_owned(),
                name: "t".into(),
                module: "main".into(),
            }
        };
        let runtime = "ab".repeat(32);
        let root = tempfile::tempdir().expect("temp dir");
        let dist = root.path().join("dist");
        std::fs::create_dir_all(&dist).expect("dist");
        let build = |task: &PythonTask| {
            std::fs::read(build_task(task, &runtime, &dist).expect("built")).expect("package")
        };
        let a = task(&root.path().join("a"), "print(1)\n");
        let first = build(&a);
        let package = PythonPackage::parse(&first).expect("a package");
        let paths: Vec<&str> = package.sources.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(paths, ["main.py", "pkg/util.py"]);
        assert_eq!(
            (package.module.as_str(), package.runtime_key.as_str()),
            ("main", runtime.as_str())
        );
        // Elsewhere, later, with other modification times: the same bytes.
        let b = task(&root.path().join("b"), "print(1)\n");
        std::fs::File::open(b.dir.join("main.py"))
            .and_then(|f| f.set_modified(std::time::UNIX_EPOCH))
            .expect("mtime");
        assert_eq!(build(&b), first);
        // Files that are not Python sources are not in it.
        std::fs::write(a.dir.join("notes.txt"), "changed").expect("write");
        assert_eq!(build(&a), first);
        // One byte of a source is; so is the runtime.
        let c = task(&root.path().join("c"), "print(2)\n");
        assert_ne!(build(&c), first);
        let other = build_task(&a, &"cd".repeat(32), &dist).expect("built");
        assert_ne!(std::fs::read(other).expect("package"), first);
        // A module that is not there is named.
        let missing = PythonTask {
            module: "pkg.nope".into(),
            ..a.clone()
        };
        let error = build_task(&missing, &runtime, &dist)
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("no pkg/nope.py or pkg/nope/__init__.py"),
            "{error}"
        );
    }
}
