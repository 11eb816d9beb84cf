//! `sluice gc` and `sluice staging list`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use super::when;
use sluice::app::App;

/// `sluice staging`.
#[derive(Subcommand)]
pub enum StagingCommand {
    /// Every staging directory: state, kept until, deleted when and why.
    List,
}

/// `sluice gc [--dry-run]` (with `--executor kubernetes`, the runs' volumes too).
pub fn gc(app: &App, runtime: &tokio::runtime::Runtime, dry_run: bool) -> Result<ExitCode> {
    let reclaimed = runtime.block_on(app.gc(dry_run))?;
    let verb = if dry_run {
        "would reclaim"
    } else {
        "reclaimed"
    };
    for r in &reclaimed {
        println!("{verb} {} ({}): {}", r.run_id, r.reason, r.path);
    }
    println!(
        "{verb} {} staging director{}",
        reclaimed.len(),
        if reclaimed.len() == 1 { "y" } else { "ies" }
    );
    Ok(ExitCode::SUCCESS)
}

/// `sluice staging list`.
pub fn run(app: &App, command: StagingCommand) -> Result<ExitCode> {
    let StagingCommand::List = command;
    println!(
        "{:<36} {:<9} {:<20} {:<20} {:<20} {:<14} PATH",
        "RUN", "STATE", "CREATED", "KEPT UNTIL", "DELETED", "REASON"
    );
    for v in app.staging_dirs()? {
        println!(
            "{:<36} {:<9} {:<20} {:<20} {:<20} {:<14} {}",
            v.run_id,
            v.state,
            when(Some(v.created_at)),
            when(v.kept_until),
            when(v.deleted_at),
            v.delete_reason.as_deref().unwrap_or(""),
            v.path
        );
    }
    Ok(ExitCode::SUCCESS)
}
