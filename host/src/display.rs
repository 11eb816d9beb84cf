//! The live per-task display of `sluice run`: one line per task with its state,
//! try, progress (reported by the task, or DuckDB's estimate) and last log line.
//! Without a terminal (or with `--no-progress`) it prints state changes as lines.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc::UnboundedReceiver;

use sluice::dag::DagSpec;
use sluice::events::RunEvent;
use sluice::state::TaskState;

/// `1.23s`.
pub fn seconds(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Renders events until the run finishes (the sender is dropped).
pub fn spawn(
    spec: &DagSpec,
    mut events: UnboundedReceiver<RunEvent>,
    plain: bool,
) -> tokio::task::JoinHandle<()> {
    let live = !plain && std::io::stderr().is_terminal();
    let ids: Vec<String> = spec.tasks.iter().map(|t| t.id.clone()).collect();
    tokio::spawn(async move {
        let width = ids.iter().map(String::len).max().unwrap_or(8);
        let multi = MultiProgress::with_draw_target(if live {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = ProgressStyle::with_template(&format!(
            "{{spinner:.cyan}} {{prefix:<{width}}} {{bar:24.cyan/blue}} {{pos:>3}}% {{elapsed:>4}} {{wide_msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bars: HashMap<String, ProgressBar> = ids
            .iter()
            .map(|id| {
                let bar = multi.add(
                    ProgressBar::new(100)
                        .with_style(style.clone())
                        .with_prefix(id.clone()),
                );
                bar.set_message("scheduled");
                (id.clone(), bar)
            })
            .collect();
        while let Some(event) = events.recv().await {
            match event {
                RunEvent::TaskState {
                    task_id,
                    state,
                    try_number,
                    error,
                } => {
                    if !live {
                        let error = error
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default();
                        eprintln!(
                            "{} {task_id} {state} (try {try_number}){error}",
                            chrono::Utc::now().format("%H:%M:%S%.3f")
                        );
                    }
                    let Some(bar) = bars.get(&task_id) else {
                        continue;
                    };
                    match state {
                        TaskState::Running => {
                            bar.reset();
                            bar.enable_steady_tick(Duration::from_millis(120));
                            bar.set_message(format!("running (try {try_number})"));
                        }
                        TaskState::Success => {
                            bar.set_position(100);
                            bar.finish_with_message(format!("success (try {try_number})"));
                        }
                        s if s.is_finished() => {
                            bar.abandon_with_message(format!("{s}: {}", error.unwrap_or_default()));
                        }
                        s => bar.set_message(format!("{s} {}", error.unwrap_or_default())),
                    }
                }
                RunEvent::Progress { key, done, total } if total > 0 => {
                    if let Some(bar) = bars.get(&key.task_id) {
                        bar.set_position(done.saturating_mul(100) / total);
                    }
                }
                RunEvent::SqlProgress { key, percent } => {
                    if let Some(bar) = bars.get(&key.task_id) {
                        bar.set_position(percent.clamp(0.0, 100.0) as u64);
                    }
                }
                RunEvent::Log { key, message, .. } => {
                    if let Some(bar) = bars.get(&key.task_id) {
                        bar.set_message(format!("try {}: {message}", key.try_number));
                    }
                }
                RunEvent::Progress { .. } | RunEvent::RunFinished { .. } => {}
            }
        }
        for bar in bars.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    })
}
