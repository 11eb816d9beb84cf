//! Sluice's core: what a pipeline is and what happened to it, without DuckDB
//! or wasmtime, so it builds and tests in seconds.
//!
//! - [`manifest`] reads `dag.toml` into the [`dag`] model; [`schedule`] turns a
//!   DAG's schedule into data intervals.
//! - [`state`] names run and task-instance states; [`events`] is what running
//!   tasks report; [`run`] is a run as a state machine (events in, effects out).
//! - [`store`] is the metadatabase (SQLite) that records versions, runs, tries,
//!   logs, staging volumes, connections and trust.

pub mod dag;
pub mod events;
pub mod manifest;
pub mod run;
pub mod run_id;
pub mod schedule;
pub mod state;
pub mod store;
