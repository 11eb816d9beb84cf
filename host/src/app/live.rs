//! Live views of runs carried out by this process: every event of one run
//! or one DAG, and the tail of a task's log (what is stored, then each line
//! as the run loop stores it). They follow the run loop's broadcast
//! ([`App::watch`]); nothing polls the metadatabase.

use std::collections::VecDeque;

use tokio::sync::broadcast::{Receiver, error::RecvError};

use super::runs::{LogLine, MAX_PAGE, RunDetail};
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

/// The tail of a task's log: every stored line after the one asked for,
/// then each new line once stored, each exactly once and in order. The run
/// loop broadcasts a line only after storing it, and the tail subscribes
/// before its first read, so a line is either read from the store or
/// received (or both: then its id, not above the last passed on, drops it).
pub struct LogTail {
    app: App,
    watch: Watch,
    run_id: String,
    task_id: String,
    try_number: Option<u32>,
    /// The id of the last line passed on.
    after: i64,
    /// Stored lines read and not yet passed on.
    stored: VecDeque<LogLine>,
    /// The last read filled its page: more stored lines may follow.
    more_stored: bool,
}

impl LogTail {
    /// The next line: stored ones first (read a page at a time), then live.
    pub async fn next(&mut self) -> Result<Watched<LogLine>, AppError> {
        loop {
            if let Some(line) = self.stored.pop_front() {
                self.after = line.id;
                return Ok(Watched::Item(line));
            }
            if self.more_stored {
                self.read_page().await?;
                continue;
            }
            let notice = match self.watch.next().await {
                Watched::Item(n) => n,
                Watched::Missed(n) => return Ok(Watched::Missed(n)),
                Watched::End => return Ok(Watched::End),
            };
            let (
                RunEvent::Log {
                    key,
                    ts,
                    level,
                    message,
                },
                Some(id),
            ) = (notice.event, notice.log_id)
            else {
                continue;
            };
            if key.task_id != self.task_id
                || self.try_number.is_some_and(|t| t != key.try_number)
                || id <= self.after
            {
                continue;
            }
            self.after = id;
            return Ok(Watched::Item(LogLine {
                id,
                try_number: key.try_number,
                ts,
                level: level.to_owned(),
                message,
            }));
        }
    }

    /// Reads the stored lines after the last passed on (on the blocking pool:
    /// the store is blocking SQLite).
    async fn read_page(&mut self) -> Result<(), AppError> {
        let (app, run_id, task_id) = (self.app.clone(), self.run_id.clone(), self.task_id.clone());
        let (try_number, after) = (self.try_number, self.after);
        let page = tokio::task::spawn_blocking(move || {
            app.logs_page(&run_id, &task_id, try_number, after, MAX_PAGE)
        })
        .await
        .map_err(|e| AppError::WorkerThread {
            what: "reading a log tail's stored lines",
            reason: e.to_string(),
        })??;
        self.more_stored = page.lines.len() == MAX_PAGE as usize;
        self.stored = page.lines.into();
        Ok(())
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
    /// `after`, then its new lines until the run ends (see [`LogTail`]).
    pub fn tail_logs(
        &self,
        run_id: &str,
        task_id: &str,
        try_number: Option<u32>,
        after: i64,
    ) -> Result<LogTail, AppError> {
        // Subscribe first: a line stored after the first read is received.
        let rx = self.watch();
        let run = self.show_run(run_id)?;
        let first = self.logs_page(run_id, task_id, try_number, after, MAX_PAGE)?;
        Ok(LogTail {
            app: self.clone(),
            watch: Watch {
                rx,
                scope: Scope::Run(run_id.to_owned()),
                ended: ended(run.run.state),
            },
            run_id: run_id.to_owned(),
            task_id: task_id.to_owned(),
            try_number,
            after,
            more_stored: first.lines.len() == MAX_PAGE as usize,
            stored: first.lines.into(),
        })
    }
}
