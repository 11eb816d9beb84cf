//! The Sluice task SDK: write a pipeline task in Rust, compile it to a
//! WebAssembly component (`wasm32-wasip2`), and let the Sluice host run it.
//!
//! A task is one function from typed parameters to a small serializable
//! output. Heavy lifting happens in the host's DuckDB through [`Sql`]; data
//! moves between tasks as files in the run's staging directory, whose path is
//! the same in the task and inside SQL.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use sluice_sdk::{Context, Input, Result};
//!
//! #[derive(Deserialize)]
//! struct Params {
//!     rows: u64,
//! }
//!
//! #[derive(Serialize)]
//! struct Output {
//!     rows: u64,
//! }
//!
//! fn run(ctx: &Context, input: Input<Params>) -> Result<Output> {
//!     let raw = ctx.staging_path("raw.parquet");
//!     let rows = ctx.sql().execute(&format!(
//!         "COPY (SELECT range AS id FROM range({})) TO {} (FORMAT parquet)",
//!         input.params.rows,
//!         sluice_sdk::sql_literal(&raw),
//!     ))?;
//!     ctx.info(format!("wrote {rows} rows to {raw}"));
//!     Ok(Output { rows })
//! }
//!
//! sluice_sdk::task!(run);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (or `sluice build`,
//! which builds every crate of the `plugins/` workspace).

mod connections;
mod context;
mod error;
mod sql;

pub use connections::{Bucket, Postgres};
pub use context::{Context, Input};
pub use error::{Error, ErrorKind, Result};
pub use sql::{Cursor, Sql, SqlError, sql_literal};

/// Re-exported so that the `task!` macro can name it from task crates.
pub use serde_json;

/// Bindings generated from the `sluice:task` WIT package. Task authors do not
/// need these directly; they are public for the `task!` macro.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "task",
        pub_export_macro: true,
        export_macro_name: "__export_task",
        default_bindings_module: "::sluice_sdk::bindings",
    });
}

/// Declares the task's entry point.
///
/// The function takes `(&Context, Input<P>)` where `P: DeserializeOwned` and
/// returns `Result<O>` where `O: Serialize`. Parameters that fail to
/// deserialize fail the task permanently with serde's message.
#[macro_export]
macro_rules! task {
    ($run:path) => {
        struct __SluiceTask;

        impl $crate::bindings::Guest for __SluiceTask {
            fn run(
                input: ::std::string::String,
            ) -> ::std::result::Result<
                ::std::string::String,
                $crate::bindings::sluice::task::types::TaskError,
            > {
                $crate::__run_task(&input, $run)
            }
        }

        $crate::bindings::__export_task!(__SluiceTask with_types_in $crate::bindings);
    };
}

/// Glue called by [`task!`]: decodes the input, runs the task, encodes the output.
#[doc(hidden)]
pub fn __run_task<P, O>(
    input: &str,
    run: fn(&Context, Input<P>) -> Result<O>,
) -> std::result::Result<String, bindings::sluice::task::types::TaskError>
where
    P: serde::de::DeserializeOwned,
    O: serde::Serialize,
{
    let outcome = Input::<P>::decode(input)
        .and_then(|input| run(&Context::new(), input))
        .and_then(|output| serde_json::to_string(&output).map_err(Error::from));
    outcome.map_err(Error::into_wit)
}
