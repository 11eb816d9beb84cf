//! Entry points for the fuzz targets in `fuzz/`: the host-side code that parses
//! what a user or a task controls. Compiled only with the `fuzz` feature, which
//! `fuzz/Cargo.toml` enables; nothing here exists in a normal build.

use std::path::{Path, PathBuf};

use arrow::datatypes::{DataType, TimeUnit};

use crate::capabilities::postgres::copy;
use crate::capabilities::{bucket, sql};

/// The staging path a bucket `put` (`write = false`) or `get` (`write = true`)
/// would use for the guest's `arg`, or why it is refused.
pub fn staging_path(staging: &Path, arg: &str, write: bool) -> Result<PathBuf, String> {
    bucket::confine(staging, arg, write).map_err(|f| f.message)
}

/// The object key a bucket call would use for the guest's `arg`.
pub fn bucket_key(arg: &str) -> Result<String, String> {
    bucket::key(arg)
        .map(|k| k.to_string())
        .map_err(|f| f.message)
}

/// The quoted Postgres table name that `copy-in` puts into its `COPY` statement.
pub fn postgres_table(name: &str) -> String {
    copy::quote_path(name)
}

/// A DuckDB session locked down as a task's is, confined to `staging`.
pub fn locked_sql_session(staging: &Path) -> Result<duckdb::Connection, String> {
    let config = sql::SqlConfig {
        staging_dir: staging.to_path_buf(),
        memory_limit: 256 << 20,
        threads: 1,
        spill_limit: 256 << 20,
        // The target exercises DuckDB's own lockdown, the layer under the kernel's.
        sandbox: crate::confine::Sandbox::Unconfined {
            reason: "the sql_lockdown fuzz target".into(),
        },
    };
    let conn = sql::open_fresh().map_err(|e| e.message)?;
    sql::lock_down(conn, &config).map_err(|e| e.message)
}

/// The column types `extract` decodes, indexed by a fuzzer's selector byte.
const COLUMN_TYPES: [DataType; 10] = [
    DataType::Boolean,
    DataType::Int16,
    DataType::Int32,
    DataType::Int64,
    DataType::Float32,
    DataType::Float64,
    DataType::Decimal128(38, 10),
    DataType::Utf8,
    DataType::Date32,
    DataType::Timestamp(TimeUnit::Microsecond, None),
];

/// Decodes binary COPY tuples (after the header) from `data` into columns of the
/// types `selectors` pick, as `extract` does with a server's bytes; returns rows read.
pub fn decode_copy(selectors: &[u8], data: &[u8]) -> Result<usize, String> {
    let types: Vec<&DataType> = selectors
        .iter()
        .map(|s| &COLUMN_TYPES[usize::from(*s) % COLUMN_TYPES.len()])
        .collect();
    let mut builders: Vec<copy::Builder> =
        types.iter().map(|t| copy::Builder::for_type(t)).collect();
    let mut fields = Vec::new();
    let (_, rows, _) = copy::parse_tuples(data, &mut builders, usize::MAX, &mut fields)
        .map_err(|e| e.to_string())?;
    for (builder, data_type) in builders.iter_mut().zip(types) {
        builder.finish(data_type);
    }
    Ok(rows)
}

/// The DECIMAL(38, 10) mantissa `extract` makes of a binary `numeric` field.
pub fn numeric_mantissa(field: &[u8]) -> Result<i128, String> {
    copy::numeric_mantissa(field).map_err(|e| e.to_string())
}

/// The binary `numeric` field (without its length) `copy-in` sends for `mantissa × 10^-scale`.
pub fn numeric_field(mantissa: i128, scale: u16) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    copy::put_numeric(mantissa, scale, &mut buf);
    buf.split_off(4).to_vec()
}
