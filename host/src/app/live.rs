//! Live views of runs carried out by this process: every event of one run
//! or one DAG, and the tail of a task's log (what is stored, then each line
//! as the task writes it). They follow the run loop's broadcast
//! ([`App::watch`]); nothing polls the metadatabase.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use tokio::sync::broadcast::{Receiver, error::RecvError};

use super::runs::{LogLine, LogPage, MAX_PAGE, RunDetail};
use super::{App, AppError};
use crate::events::{RunEvent, RunNotice};
use crate::state::RunState;

/// What a watch yields next.
#[derive(Debug)]
pub enum Watched<T> {
    /// The next item.
    Item(T),
    /// The watcher fell behind and missed this many events: re-read the
    /// state from the store.
    Missed(u64),
    /// Nothing more will come (the run ended, or the host is shutting down).
    End,
}

/// Which notices a [`Watch`] passes on.
#[derive(Debug, Clone)]
enum Scope {
    Run(String),
    Dag(Option<String>),
}

/// The events of one run, or of every run of one DAG (or of all DAGs).
pub struct Watch {
    rx: Receiver<RunNotice>,
    scope: Scope,
    ended: bool,
}

impl Watch {
    /// The next notice in scope. A run's watch ends after its `run_finished`.
    pub async fn next(&mut self) -> Watched<RunNotice> {
        if self.ended {
            return Watched::End;
        }
        loop {
            match self.rx.recv().await {
                Ok(notice) => {
                    let in_scope = match &self.scope {
                        Scope::Run(run_id) => &notice.run_id == run_id,
                        Scope::Dag(dag_id) => dag_id.as_ref().is_none_or(|d| d == &notice.dag_id),
                    };
                    if !in_scope {
                        continue;
                    }
                    if matches!(self.scope, Scope::Run(_))
                        && matches!(notice.event, RunEvent::RunFinished { .. })
                    {
                        self.ended = true;
                    }
                    return Watched::Item(notice);
                }
                Err(RecvError::Lagged(n)) => return Watched::Missed(n),
                Err(RecvError::Closed) => return Watched::End,
            }
        }
    }
}

/// A run as it is now and its events from then on.
pub struct RunWatch {
    /// The run when the watch began.
    pub detail: RunDetail,
    /// Its events from then on (none if it had ended).
    pub events: Watch,
}

/// The tail of a task's log: the lines stored when it began, then each new
/// line as the task writes it.
pub struct LogTail {
    /// The stored lines (at most [`MAX_PAGE`] after the line asked for).
    pub backlog: LogPage,
    watch: Watch,
    task_id: String,
    try_number: Option<u32>,
    /// The last stored timestamp and the messages at it, so a line both
    /// stored and broadcast after the watch began is passed on once.
    seen: Option<(DateTime<Utc>, HashSet<String>)>,
}

impl LogTail {
    /// The next line written (`id` 0: not yet stored).
    pub async fn next(&mut self) -> Watched<LogLine> {
        loop {
            let notice = match self.watch.next().await {
                Watched::Item(n) => n,
                Watched::Missed(n) => return Watched::Missed(n),
                Watched::End => return Watched::End,
            };
            let RunEvent::Log {
                key,
                ts,
                level,
                message,
            } = notice.event
            else {
                continue;
            };
            if key.task_id != self.task_id || self.try_number.is_some_and(|t| t != key.try_number) {
                continue;
            }
            if let Some((last, messages)) = &self.seen
                && (ts < *last || (ts == *last && messages.contains(&message)))
            {
                continue;
            }
            return Watched::Item(LogLine {
                id: 0,
                try_number: key.try_number,
                ts,
                level: level.to_owned(),
                message,
            });
        }
    }
}

fn ended(state: RunState) -> bool {
    matches!(state, RunState::Success | RunState::Failed)
}

impl App {
    /// Every event of the runs of `dag_id` (or of every DAG) from now on.
    pub fn watch_dag(&self, dag_id: Option<&str>) -> Watch {
        Watch {
            rx: self.watch(),
            scope: Scope::Dag(dag_id.map(str::to_owned)),
            ended: false,
        }
    }

    /// Run `run_id` as it is now, and its events until it ends.
    pub fn watch_run(&self, run_id: &str) -> Result<RunWatch, AppError> {
        // Subscribe first, so nothing between the read and the watch is lost.
        let rx = self.watch();
        let detail = self.show_run(run_id)?;
        Ok(RunWatch {
            events: Watch {
                rx,
                scope: Scope::Run(run_id.to_owned()),
                ended: ended(detail.run.state),
            },
            detail,
        })
    }

    /// The log of `task_id` in run `run_id` (one try or all) after line
    /// `after`, then its new lines until the run ends.
    pub fn tail_logs(
        &self,
        run_id: &str,
        task_id: &str,
        try_number: Option<u32>,
        after: i64,
    ) -> Result<LogTail, AppError> {
        let rx = self.watch();
        let run = self.show_run(run_id)?;
        let backlog = self.logs_page(run_id, task_id, try_number, after, MAX_PAGE)?;
        let seen = backlog.lines.last().map(|last| {
            let at_last = backlog
                .lines
                .iter()
                .filter(|l| l.ts == last.ts)
                .map(|l| l.message.clone())
                .collect();
            (last.ts, at_last)
        });
        Ok(LogTail {
            backlog,
            watch: Watch {
                rx,
                scope: Scope::Run(run_id.to_owned()),
                ended: ended(run.run.state),
            },
            task_id: task_id.to_owned(),
            try_number,
            seen,
        })
    }
}
