//! End-to-end tests: real components built from `plugins/`, real DuckDB, real
//! DAG runs, and the real `sluice` binary.

mod support;

mod bench;
mod browser;
mod confinement;
mod connections;
mod deploy;
mod error_kinds;
mod etl;
mod http;
mod kubernetes;
mod lifecycle;
mod limits;
mod manifests;
mod outputs;
mod parallel;
mod pg;
mod postgres;
mod python;
mod retries;
mod s3;
mod sandbox;
mod schedules;
mod trust;
