//! `sluice connections`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use tokio::runtime::Runtime;

use sluice::app::App;
use sluice::app::connections::{
    CheckResult, ConnectionDetails, ConnectionInput, NewMasterKey, S3Fields, S3Secret,
};
use sluice::connections::ConnectionConfig;

/// `sluice connections`.
#[derive(Subcommand)]
pub enum ConnectionsCommand {
    /// Add a connection from an Airflow-style URI, or an S3-compatible store from flags.
    Add {
        /// Connection id (what a DAG grants to a task).
        id: String,
        /// `postgresql://user:pw@host:5432/db?sslmode=...`, `s3://KEY:SECRET@bucket?endpoint_url=...`.
        #[arg(long, conflicts_with = "kind")]
        uri: Option<String>,
        /// `s3` to give the store's fields one by one.
        #[arg(long = "type", value_name = "TYPE", requires_all = ["bucket", "access_key_id"])]
        kind: Option<String>,
        /// S3 endpoint URL (none: AWS).
        #[arg(long)]
        endpoint: Option<String>,
        /// S3 region.
        #[arg(long, default_value = "us-east-1")]
        region: String,
        /// S3 bucket.
        #[arg(long)]
        bucket: Option<String>,
        /// S3 access key id.
        #[arg(long)]
        access_key_id: Option<String>,
        /// The environment variable holding the S3 secret key (kept out of shell history).
        #[arg(long, default_value = "SLUICE_S3_SECRET_KEY")]
        secret_key_env: String,
        /// Path-style addressing.
        #[arg(long)]
        path_style: bool,
        /// Overwrite an existing connection.
        #[arg(long)]
        replace: bool,
    },
    /// Every connection, without secrets.
    List,
    /// One connection, without its secret.
    Show {
        /// Connection id.
        id: String,
    },
    /// Delete a connection.
    Delete {
        /// Connection id.
        id: String,
    },
    /// Open a connection and report success or why not.
    Test {
        /// Connection id.
        id: String,
    },
    /// Re-encrypt every secret under a new master key.
    RotateKey,
    /// Import `AIRFLOW_CONN_*` variables from the environment (URI and JSON forms).
    ImportAirflow {
        /// Overwrite connections that exist.
        #[arg(long)]
        replace: bool,
    },
}

/// `sluice connections ...`: exit 1 if a test or an import failed.
pub fn run(app: &App, runtime: &Runtime, command: ConnectionsCommand) -> Result<ExitCode> {
    match command {
        ConnectionsCommand::Add {
            id,
            uri,
            kind,
            endpoint,
            region,
            bucket,
            access_key_id,
            secret_key_env,
            path_style,
            replace,
        } => {
            let input = ConnectionInput {
                id,
                uri,
                kind,
                s3: S3Fields {
                    endpoint,
                    region,
                    bucket,
                    access_key_id,
                    secret: S3Secret::Env(secret_key_env),
                    path_style,
                },
            };
            let added = runtime.block_on(app.add_connection(input, replace))?;
            let id = &added.connection.id;
            println!("added {id}: {}", added.connection.description);
            match added.check {
                Some(CheckResult::Reachable {
                    summary,
                    privilege_warning,
                }) => {
                    println!("checked {id}: {summary}");
                    warn_if_privileged(id, privilege_warning.as_deref());
                }
                Some(CheckResult::Unreachable { reason }) => eprintln!(
                    "note: connection `{id}` was added but its role's privileges could not be checked ({reason}); \
                     run `sluice connections test {id}` once the server is reachable"
                ),
                None => {}
            }
        }
        ConnectionsCommand::List => {
            println!("{:<24} {:<9} WHERE", "ID", "TYPE");
            for c in app.list_connections()? {
                println!("{:<24} {:<9} {}", c.id, c.kind, c.description);
            }
        }
        ConnectionsCommand::Show { id } => show(&app.show_connection(&id)?),
        ConnectionsCommand::Delete { id } => {
            app.delete_connection(&id)?;
            println!("deleted {id}");
        }
        ConnectionsCommand::Test { id } => match runtime.block_on(app.test_connection(&id))? {
            CheckResult::Reachable {
                summary,
                privilege_warning,
            } => {
                warn_if_privileged(&id, privilege_warning.as_deref());
                println!("ok: {id}: {summary}");
            }
            CheckResult::Unreachable { reason } => {
                eprintln!("error: connection `{id}`: {reason}");
                return Ok(ExitCode::FAILURE);
            }
        },
        ConnectionsCommand::RotateKey => match app.rotate_master_key()? {
            NewMasterKey::Environment { var, key } => {
                println!("re-encrypted every connection; set {var} to the new key:\n{key}");
            }
            NewMasterKey::File { path } => println!(
                "re-encrypted every connection; the new key is in {}",
                path.display()
            ),
        },
        ConnectionsCommand::ImportAirflow { replace } => {
            let mut failed = false;
            for imported in app.import_airflow(std::env::vars(), replace)? {
                match imported {
                    Ok(c) => println!("imported {}: {}", c.id, c.description),
                    Err(e) => {
                        failed = true;
                        eprintln!("error: {e}");
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Warns (stderr) that connection `id`'s role holds powers a task needs an opt-in for.
fn warn_if_privileged(id: &str, warning: Option<&str>) {
    if let Some(warning) = warning {
        eprintln!("warning: connection `{id}`: {warning}");
    }
}

fn show(connection: &ConnectionDetails) {
    println!("id       {}", connection.id);
    match &connection.config {
        ConnectionConfig::Postgres {
            host,
            port,
            database,
            user,
            extras,
        } => {
            println!(
                "type     postgres\nhost     {host}\nport     {port}\ndatabase {database}\nuser     {user}"
            );
            let password = if connection.has_secret {
                "***"
            } else {
                "(none)"
            };
            println!("password {password}");
            for (k, v) in extras {
                println!("extra    {k}={v}");
            }
        }
        ConnectionConfig::S3 {
            endpoint,
            region,
            bucket,
            access_key_id,
            path_style,
        } => {
            println!(
                "type     s3\nendpoint {}\nregion   {region}",
                endpoint.as_deref().unwrap_or("AWS")
            );
            println!(
                "bucket   {bucket}\nkey id   {access_key_id}\nsecret   ***\npath     {path_style}"
            );
        }
    }
}
