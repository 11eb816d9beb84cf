//! `sluice serve` and `sluice tokens`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use tokio::runtime::Runtime;
use tokio::sync::watch;

use super::when;
use sluice::app::App;
use sluice::app::tokens::Role;

/// `sluice serve`: the API and UI until Ctrl-C or SIGTERM (and, with
/// `scheduler`, the scheduler loop, whose running runs finish first).
pub fn serve(
    app: &App,
    runtime: &Runtime,
    bind: SocketAddr,
    require_tokens: bool,
    scheduler: bool,
) -> Result<ExitCode> {
    eprintln!("{}", app.sandbox().describe());
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        // An error means the sender is gone: stop as well.
        let _ = rx.wait_for(|stop| *stop).await;
    };
    runtime.block_on(async {
        tokio::spawn(async move {
            wait_for_signal().await;
            eprintln!("stopping: no new requests or runs; waiting for running runs to finish");
            let _ = stop_tx.send(true);
        });
        let on_listen = |addr: SocketAddr| {
            println!("listening on http://{addr}");
            // The line is what scripts (and the tests) wait for.
            let _ = std::io::stdout().flush();
        };
        let server = sluice::http::serve(
            app.clone(),
            bind,
            require_tokens,
            stopped(stop_rx.clone()),
            on_listen,
        );
        if scheduler {
            let (served, scheduled) = tokio::join!(server, app.scheduler(false, stopped(stop_rx)));
            served.context("the HTTP server failed")?;
            scheduled.context("the scheduler failed")?;
        } else {
            server.await.context("the HTTP server failed")?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::warn!("cannot listen for Ctrl-C: {e}");
            }
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        result = tokio::signal::ctrl_c() => {
            if let Err(e) = result {
                tracing::warn!("cannot listen for Ctrl-C: {e}");
            }
        }
    }
}

/// `sluice tokens`.
#[derive(Subcommand)]
pub enum TokensCommand {
    /// Create an API token; it is printed once and stored only as a hash.
    Create {
        /// What it may do: `viewer` reads, `operator` also triggers and
        /// clears runs, `admin` also manages connections.
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// A name to tell it by.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// The tokens (never their secrets).
    List,
    /// Revoke a token by its id.
    Revoke {
        /// The token id (from `sluice tokens list`).
        token_id: String,
    },
}

/// `sluice tokens ...`.
pub fn tokens(app: &App, command: TokensCommand) -> Result<ExitCode> {
    match command {
        TokensCommand::Create { role, name } => {
            let role = Role::parse(&role).with_context(|| format!("`{role}` is not a role"))?;
            let created = app.create_token(role, &name)?;
            eprintln!(
                "created {} token `{}`; it is shown only now:",
                created.info.role, created.info.token_id
            );
            println!("{}", created.token);
        }
        TokensCommand::List => {
            for t in app.tokens()? {
                println!(
                    "{}  {:<8}  {}  {}",
                    t.token_id,
                    t.role,
                    when(Some(t.created_at)),
                    t.name
                );
            }
        }
        TokensCommand::Revoke { token_id } => {
            app.revoke_token(&token_id)?;
            println!("revoked token `{token_id}`");
        }
    }
    Ok(ExitCode::SUCCESS)
}
