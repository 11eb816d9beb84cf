//! Sluice: runs data-pipeline tasks as sandboxed WebAssembly components, with
//! DuckDB in the host doing the heavy lifting.
//!
//! Data flows one way: a front end (the CLI, the HTTP API in [`http`]) calls the [`app`]
//! layer, which asks the [`scheduler`] to run a deployed DAG version; the
//! scheduler hands each try to the [`executor`], which instantiates the
//! component with the [`engine`]; the guest reaches the world
//! only through the host calls in [`capabilities`] (its context, SQL in its own
//! DuckDB session confined to the run's staging directory, logging).

pub mod app;
mod bindings;
pub mod capabilities;
pub mod confine;
pub mod connections;
pub mod daemon;
pub mod digest;
mod duckdb_wait;
pub mod engine;
pub mod executor;
#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod home;
pub mod http;
pub mod plugins;
pub mod python_package;
pub mod registry;
pub mod runtime;
pub mod scheduler;
pub mod staging;
pub mod staging_usage;
pub mod trust;
pub mod vault;

pub use runtime::Sluice;
pub use sluice_core::{dag, events, manifest, run_id, schedule, state, store};
