//! `sluice connections`.

use std::process::ExitCode;

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use clap::Subcommand;
use tokio::runtime::Runtime;

use sluice::app::App;
use sluice::app::connections::{
    CheckResult, ConnectionDetails, ConnectionInput, NewMasterKey, SecretInput,
};

/// `sluice connections`.
#[derive(Subcommand)]
pub enum ConnectionsCommand {
    /// Add a connection from an Airflow-style URI, or from its type and fields
    /// (an S3-compatible store has flags of its own).
    Add {
        /// Connection id (what a DAG grants to a task).
        id: String,
        /// `postgresql://user:pw@host:5432/db?sslmode=...`, `s3://KEY:SECRET@bucket?endpoint_url=...`.
        #[arg(long, conflicts_with = "kind")]
        uri: Option<String>,
        /// The type (`s3`, `postgres`), to give its fields one by one.
        #[arg(long = "type", value_name = "TYPE")]
        kind: Option<String>,
        /// A field of the type (`--field host=db --field user=etl`), repeatable.
        #[arg(long = "field", value_name = "KEY=VALUE", requires = "kind", value_parser = field)]
        fields: Vec<(String, String)>,
        /// S3 endpoint URL (none: AWS).
        #[arg(long)]
        endpoint: Option<String>,
        /// S3 region [default: us-east-1].
        #[arg(long)]
        region: Option<String>,
        /// S3 bucket.
        #[arg(long)]
        bucket: Option<String>,
        /// S3 access key id.
        #[arg(long)]
        access_key_id: Option<String>,
        /// The environment variable holding the secret key or password (kept
        /// out of shell history), with `--type`; an unset one is an error.
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
            fields,
            endpoint,
            region,
            bucket,
            access_key_id,
            secret_key_env,
            path_style,
            replace,
        } => {
            let input = match (uri, kind) {
                (Some(uri), _) => ConnectionInput::Uri { id, uri },
                (None, Some(kind)) => {
                    let mut fields: BTreeMap<String, String> = fields.into_iter().collect();
                    let flags = [
                        ("endpoint", endpoint),
                        ("region", region),
                        ("bucket", bucket),
                        ("access_key_id", access_key_id),
                        ("path_style", path_style.then(|| "true".to_owned())),
                    ];
                    for (key, value) in flags {
                        if let Some(value) = value {
                            fields.insert(key.to_owned(), value);
                        }
                    }
                    ConnectionInput::Fields {
                        id,
                        kind,
                        fields,
                        secret: SecretInput::Env(secret_key_env),
                    }
                }
                (None, None) => bail!("give --uri or --type (s3, postgres) and its fields"),
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
    println!("{:<8} {}", "id", connection.id);
    for (label, value) in &connection.details {
        println!("{label:<8} {value}");
    }
}

/// `KEY=VALUE` of `--field`.
fn field(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{arg}` is not KEY=VALUE")),
    }
}
