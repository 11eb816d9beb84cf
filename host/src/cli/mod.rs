//! The commands of the `sluice` binary, one module per concern as in
//! [`sluice::app`]: each calls the application layer and prints its results.

pub mod connections;
pub mod deploy;
pub mod kubernetes;
pub mod runs;
pub mod schedules;
pub mod serve;
pub mod staging;
pub mod trust;

use std::process::ExitCode;

use sluice::app::{App, AppConfig, AppError};
use sluice::state::RunState;

/// Opens the application for a command that runs tasks: says on stderr how
/// tasks are confined, and refuses when they cannot be (no Landlock, no opt-out).
pub fn open_for_tasks(config: &AppConfig) -> Result<App, AppError> {
    let app = App::open(config)?;
    eprintln!("{}", app.sandbox().describe());
    app.check_sandbox()?;
    Ok(app)
}

/// The first 12 hex digits of a digest.
pub fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// `YYYY-MM-DD HH:MM:SS`, or nothing.
pub fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// Success if every run succeeded.
pub fn exit_code(states: impl IntoIterator<Item = RunState>) -> ExitCode {
    if states.into_iter().all(|s| s == RunState::Success) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
