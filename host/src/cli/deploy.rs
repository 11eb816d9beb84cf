//! `sluice build`, `deploy` and `versions`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::short;
use sluice::app::App;
use sluice::app::deploy::{Deployed, build_plugins};

/// `sluice build`.
pub fn build(plugins: &Path) -> Result<ExitCode> {
    for path in build_plugins(plugins)? {
        println!("built {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `deployed <dag> <version> (<label>) — <new version|unchanged>, <what was compiled>`.
pub fn print_deployed(d: &Deployed) {
    let what = if d.new_version {
        "new version"
    } else {
        "unchanged"
    };
    let compiled = if d.compiled.is_empty() {
        "nothing compiled".to_owned()
    } else {
        format!("compiled {}", d.compiled.join(", "))
    };
    println!(
        "deployed {} {} ({}) — {what}, {compiled}",
        d.dag_id,
        short(&d.version),
        d.label
    );
}

/// `sluice deploy [--sign KEY]`.
pub fn deploy(app: &App, manifest: &Path, sign: Option<&str>) -> Result<ExitCode> {
    let deployed = app.deploy(manifest)?;
    print_deployed(&deployed);
    if let Some(key) = sign {
        let public = app.sign_version(key, &deployed.dag_id, &deployed.version)?;
        println!(
            "signed {} {} with key `{key}` ({public})",
            deployed.dag_id,
            short(&deployed.version)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice versions`.
pub fn versions(app: &App, dag_id: &str) -> Result<ExitCode> {
    let versions = app.versions(dag_id)?;
    println!(
        "{:<1} {:<12} {:<24} {:<20} {:>5}  SOURCE",
        "", "VERSION", "LABEL", "DEPLOYED", "TASKS"
    );
    for v in versions {
        println!(
            "{:<1} {:<12} {:<24} {:<20} {:>5}  {}",
            if v.current { "*" } else { "" },
            short(&v.digest),
            v.label,
            v.created_at.format("%Y-%m-%d %H:%M:%S"),
            v.tasks,
            v.source
        );
    }
    Ok(ExitCode::SUCCESS)
}
