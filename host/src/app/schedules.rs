//! Runs created from DAG schedules: the scheduler loop and backfills.

use std::future::Future;

use super::runs::FinishedRun;
use super::{App, AppError};

impl App {
    /// Creates and carries out scheduled runs until `shutdown` resolves (with
    /// `once`: one pass and the runs it started), resuming runs a stopped host
    /// left running. Returns the runs it carried out.
    pub async fn scheduler(
        &self,
        once: bool,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Vec<FinishedRun>, AppError> {
        self.check_sandbox()?;
        let policy = self.staging_policy(false);
        let done = crate::daemon::serve(self.sluice.clone(), policy, once, shutdown).await?;
        Ok(done.into_iter().map(FinishedRun::from).collect())
    }

    /// Creates and carries out the runs of `dag_id` for every interval starting
    /// between `from` and `to` (inclusive; dates in the DAG's time zone),
    /// skipping intervals that succeeded or are running. Sorted by run id.
    pub async fn backfill(
        &self,
        dag_id: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<FinishedRun>, AppError> {
        self.check_sandbox()?;
        let version = self.sluice.store.current_version(dag_id)?;
        let timezone = version
            .spec
            .schedule
            .as_ref()
            .map_or("UTC", |s| s.timezone.as_str());
        let date = |text: &str| {
            crate::schedule::parse_start_date(text, timezone).map_err(|source| {
                AppError::InvalidDate {
                    text: text.to_owned(),
                    source,
                }
            })
        };
        let (from, to) = (date(from)?, date(to)?);
        let policy = self.staging_policy(false);
        let done = crate::daemon::backfill(self.sluice.clone(), dag_id, from, to, policy).await?;
        Ok(done.into_iter().map(FinishedRun::from).collect())
    }
}
