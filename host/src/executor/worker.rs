//! `sluice worker`: the child side of the [`ProcessExecutor`](super::ProcessExecutor).
//! Reads one [`TryRequest`] line on stdin, runs it with an in-process
//! executor, and writes [`WorkerMessage`] lines on stdout, the outcome last.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::process::WorkerMessage;
use super::{Executor, TryRequest};

/// Largest request line a worker reads (params and upstream outputs).
const MAX_REQUEST_BYTES: u64 = 64 << 20;

/// Why a worker could not serve its try.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Reading the request or writing a report failed.
    #[error("worker: {0}")]
    Io(#[from] std::io::Error),
    /// The request line is not a try.
    #[error("worker: the request on stdin is not a try: {0}")]
    Request(#[source] serde_json::Error),
    /// A report could not be encoded.
    #[error("worker: cannot encode a report: {0}")]
    Report(#[source] serde_json::Error),
}

/// Serves one try with `executor`: waits until the try's databases are
/// closed, then reports its outcome.
pub async fn serve(executor: &dyn Executor) -> Result<(), WorkerError> {
    let mut line = String::new();
    BufReader::new(tokio::io::stdin().take(MAX_REQUEST_BYTES))
        .read_line(&mut line)
        .await?;
    let request: TryRequest = serde_json::from_str(&line).map_err(WorkerError::Request)?;
    let run_id = request.key.run_id.clone();
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    let try_run = executor.run(request, events);
    let mut stdout = tokio::io::stdout();
    let relay = async {
        while let Some(event) = received.recv().await {
            if let Some(message) = WorkerMessage::from_event(event) {
                write(&mut stdout, &message).await?;
            }
        }
        Ok::<_, WorkerError>(())
    };
    // The try's sender is dropped when it ends, which ends the relay.
    let (outcome, relayed) = tokio::join!(try_run, relay);
    relayed?;
    // The outcome is the last word: once it is out, this process holds no
    // file of the run and the host no longer waits for it.
    executor.release(&run_id);
    write(&mut stdout, &WorkerMessage::Outcome(outcome)).await?;
    Ok(())
}

async fn write(stdout: &mut tokio::io::Stdout, message: &WorkerMessage) -> Result<(), WorkerError> {
    let mut line = serde_json::to_vec(message).map_err(WorkerError::Report)?;
    line.push(b'\n');
    stdout.write_all(&line).await?;
    stdout.flush().await?;
    Ok(())
}
