//! `sluice keys` and `sluice trust`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use sluice::app::App;

/// `sluice keys`.
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create an ed25519 signing key in the Sluice home; prints its public key.
    Generate {
        /// Key name.
        name: String,
    },
}

/// `sluice trust`.
#[derive(Subcommand)]
pub enum TrustCommand {
    /// Trust a public key (64 hex digits).
    Add {
        /// The public key.
        public_key: String,
        /// A name to show.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Stop trusting a public key.
    Remove {
        /// The public key.
        public_key: String,
    },
    /// Trusted keys and the policy.
    List,
    /// Require (on) or not (off) a trusted signature for every run.
    Require {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        setting: String,
    },
}

/// `sluice keys generate`.
pub fn keys(app: &App, command: KeysCommand) -> Result<ExitCode> {
    let KeysCommand::Generate { name } = command;
    let key = app.generate_key(&name)?;
    println!("created key `{}` at {}", key.name, key.path.display());
    println!("public key: {}", key.public_key);
    Ok(ExitCode::SUCCESS)
}

/// `sluice trust add|remove|list|require`.
pub fn trust(app: &App, command: TrustCommand) -> Result<ExitCode> {
    match command {
        TrustCommand::Add { public_key, name } => {
            println!("trusted {}", app.trust_key(&public_key, &name)?);
        }
        TrustCommand::Remove { public_key } => {
            println!("no longer trusted: {}", app.distrust_key(&public_key)?);
        }
        TrustCommand::List => {
            let policy = app.trust_policy()?;
            println!("require signatures: {}", on_off(policy.require_signatures));
            for key in policy.keys {
                println!("{} {}", key.public_key, key.name);
            }
        }
        TrustCommand::Require { setting } => {
            let on = setting == "on";
            app.require_signatures(on)?;
            println!("require signatures: {}", on_off(on));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}
