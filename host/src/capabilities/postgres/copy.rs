//! PostgreSQL's binary COPY format, both ways: DuckDB's Arrow batches encoded
//! column-typed into `COPY ... FROM STDIN` (`copy-in`), and `COPY ... TO STDOUT`
//! decoded straight into Arrow batches for DuckDB (`extract`), in bounded memory.

use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use duckdb::arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Date32Array, Date32Builder, Decimal128Array,
    Float32Array, Float32Builder, Float64Array, Float64Builder, Int16Array, Int16Builder,
    Int32Array, Int32Builder, Int64Array, Int64Builder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use duckdb::arrow::compute::cast;
use duckdb::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use futures_util::{SinkExt, StreamExt, pin_mut};
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::client::pg_failure;
use crate::capabilities::failure::Failure;
use crate::capabilities::sql::SqlError;

/// Rows per batch when extracting from Postgres.
const EXTRACT_BATCH_ROWS: usize = 8192;
/// Bytes of COPY data per batch when extracting from Postgres: wide rows make
/// smaller batches, so the host holds about `BATCHES_IN_FLIGHT + 2` of these
/// (plus one row) whatever the row width.
const EXTRACT_BATCH_BYTES: usize = 16 << 20;

/// Why a value does not convert between DuckDB's Arrow arrays and a binary
/// COPY field, or why COPY data is malformed. Retryable as a [`Failure`]:
/// the data may differ at a later try.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// A fixed-width field of the wrong length.
    #[error("a binary COPY field of {got} bytes where {expected} were expected")]
    FieldLength {
        /// Its length.
        got: usize,
        /// The type's width.
        expected: usize,
    },
    /// A tuple with another number of fields than the result has columns.
    #[error("a tuple of {count} fields where {expected} were expected")]
    TupleFields {
        /// The tuple's field count.
        count: i16,
        /// The result's column count.
        expected: usize,
    },
    /// A text field that is not UTF-8.
    #[error("text: {0}")]
    Text(#[source] std::str::Utf8Error),
    /// A text value too long for a COPY field.
    #[error("a text value over 2 GiB")]
    TextTooLong,
    /// A DuckDB date or timestamp PostgreSQL cannot hold.
    #[error("{value} {unit} out of PostgreSQL's range")]
    PostgresRange {
        /// The value, in DuckDB's epoch.
        value: i64,
        /// Days or µs.
        unit: &'static str,
    },
    /// A PostgreSQL date or timestamp DuckDB cannot hold.
    #[error("{value} {unit} after 2000-01-01 out of DuckDB's range")]
    DuckdbRange {
        /// The value, in PostgreSQL's epoch.
        value: i64,
        /// Days or µs.
        unit: &'static str,
    },
    /// A `numeric` field shorter than its header.
    #[error("a numeric field of {0} bytes")]
    NumericHeader(usize),
    /// A `numeric` NaN.
    #[error("numeric NaN does not fit DECIMAL(38,10)")]
    NumericNan,
    /// A `numeric` infinity.
    #[error("numeric infinity does not fit DECIMAL(38,10)")]
    NumericInfinity,
    /// A `numeric` sign word PostgreSQL does not send.
    #[error("a numeric field with sign word {0:#06x}")]
    NumericSign(u16),
    /// A `numeric` field whose length does not match its digit count.
    #[error("a numeric field of {bytes} bytes for {digits} digits")]
    NumericDigits {
        /// The field's length.
        bytes: usize,
        /// The digits its header announces.
        digits: u16,
    },
    /// A base-10000 digit of 10000 or more.
    #[error("a numeric digit of {0}")]
    NumericDigit(u16),
    /// A `numeric` value outside DECIMAL(38,10).
    #[error("numeric value out of DECIMAL(38,10) range")]
    NumericRange,
}

impl From<CodecError> for Failure {
    fn from(e: CodecError) -> Self {
        Failure::retryable(e.to_string())
    }
}

/// A PostgreSQL column type `extract` cannot bring into DuckDB.
#[derive(Debug, thiserror::Error)]
#[error("column `{column}`: PostgreSQL type `{ty}` is not supported by extract")]
pub struct UnsupportedType {
    /// The column.
    pub column: String,
    /// Its type.
    pub ty: Type,
}

/// `a.b` → `"a"."b"`, each part quoted.
pub(crate) fn quote_path(name: &str) -> String {
    name.split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

pub(super) fn quote_ident(part: &str) -> String {
    format!("\"{}\"", part.replace('"', "\"\""))
}

/// One column of a batch, converted to the Rust type the target column takes.
enum Column {
    Bool(BooleanArray),
    I16(Int16Array),
    I32(Int32Array),
    I64(Int64Array),
    F32(Float32Array),
    F64(Float64Array),
    Text(StringArray),
    Date(Date32Array),
    Timestamp(TimestampMicrosecondArray),
    TimestampTz(TimestampMicrosecondArray),
    /// Values and their decimal scale.
    Numeric(Decimal128Array, u16),
}

impl Column {
    /// Converts `array` for a column of PostgreSQL type `ty`.
    fn convert(name: &str, array: &ArrayRef, ty: &Type) -> Result<Self, Failure> {
        let to = |data_type: DataType| {
            cast(array, &data_type).map_err(|e| {
                Failure::retryable(format!(
                    "column `{name}`: cannot convert {} to {ty}: {e}",
                    array.data_type()
                ))
            })
        };
        macro_rules! typed {
            ($variant:ident, $arrow:expr, $array:ty) => {{
                let converted = to($arrow)?;
                let typed = converted
                    .as_any()
                    .downcast_ref::<$array>()
                    .ok_or_else(|| {
                        Failure::retryable(format!("column `{name}`: conversion to {ty} failed"))
                    })?
                    .clone();
                Ok(Column::$variant(typed))
            }};
        }
        match *ty {
            Type::BOOL => typed!(Bool, DataType::Boolean, BooleanArray),
            Type::INT2 => typed!(I16, DataType::Int16, Int16Array),
            Type::INT4 => typed!(I32, DataType::Int32, Int32Array),
            Type::INT8 => typed!(I64, DataType::Int64, Int64Array),
            Type::FLOAT4 => typed!(F32, DataType::Float32, Float32Array),
            Type::FLOAT8 => typed!(F64, DataType::Float64, Float64Array),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                typed!(Text, DataType::Utf8, StringArray)
            }
            Type::DATE => typed!(Date, DataType::Date32, Date32Array),
            Type::TIMESTAMP => typed!(
                Timestamp,
                DataType::Timestamp(TimeUnit::Microsecond, None),
                TimestampMicrosecondArray
            ),
            Type::TIMESTAMPTZ => {
                typed!(
                    TimestampTz,
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    TimestampMicrosecondArray
                )
            }
            Type::NUMERIC => {
                let (precision, scale) = match array.data_type() {
                    DataType::Decimal128(p, s) => (*p, *s),
                    _ => (38, 10),
                };
                let converted = to(DataType::Decimal128(precision, scale))?;
                let decimals = converted
                    .as_any()
                    .downcast_ref::<Decimal128Array>()
                    .ok_or_else(|| {
                        Failure::retryable(format!("column `{name}`: conversion to numeric failed"))
                    })?
                    .clone();
                let scale = u16::try_from(scale).map_err(|_| {
                    Failure::retryable(format!("column `{name}`: negative decimal scale"))
                })?;
                Ok(Column::Numeric(decimals, scale))
            }
            _ => Err(Failure::permanent(format!(
                "column `{name}`: PostgreSQL type `{ty}` is not supported \
                 (supported: boolean, smallint, integer, bigint, real, double precision, numeric, text, varchar, date, timestamp, timestamptz)"
            ))),
        }
    }

    /// Appends the binary COPY field of `row`: its length, then its bytes (-1: NULL).
    fn encode(&self, row: usize, buf: &mut BytesMut) -> Result<(), CodecError> {
        fn put<const N: usize>(buf: &mut BytesMut, bytes: [u8; N]) {
            buf.put_i32(N as i32);
            buf.put_slice(&bytes);
        }
        let null = |a: &dyn Array| a.is_null(row);
        match self {
            Self::Bool(a) if !null(a) => put(buf, [u8::from(a.value(row))]),
            Self::I16(a) if !null(a) => put(buf, a.value(row).to_be_bytes()),
            Self::I32(a) if !null(a) => put(buf, a.value(row).to_be_bytes()),
            Self::I64(a) if !null(a) => put(buf, a.value(row).to_be_bytes()),
            Self::F32(a) if !null(a) => put(buf, a.value(row).to_be_bytes()),
            Self::F64(a) if !null(a) => put(buf, a.value(row).to_be_bytes()),
            Self::Text(a) if !null(a) => {
                let text = a.value(row).as_bytes();
                buf.put_i32(i32::try_from(text.len()).map_err(|_| CodecError::TextTooLong)?);
                buf.put_slice(text);
            }
            Self::Date(a) if !null(a) => put(buf, date_to_pg(a.value(row))?.to_be_bytes()),
            Self::Timestamp(a) | Self::TimestampTz(a) if !null(a) => put(
                buf,
                TIMESTAMP_EPOCH.postgres_value(a.value(row))?.to_be_bytes(),
            ),
            Self::Numeric(a, scale) if !null(a) => put_numeric(a.value(row), *scale, buf),
            _ => buf.put_i32(-1),
        }
        Ok(())
    }
}

/// Appends `mantissa × 10^-scale` as a binary `numeric` field (length first):
/// base-10000 digits, integer part right-aligned and fraction left-aligned,
/// without leading or trailing zero digits. Exact for every Decimal128.
pub(crate) fn put_numeric(mantissa: i128, scale: u16, buf: &mut BytesMut) {
    // Decimal128 holds at most 38 digits: 10 base-10000 digits on each side.
    let mut digits = [0u16; 20];
    let (integer, fraction) = match 10u128.checked_pow(u32::from(scale)) {
        Some(unit) => (
            mantissa.unsigned_abs() / unit,
            mantissa.unsigned_abs() % unit,
        ),
        None => (0, mantissa.unsigned_abs()),
    };
    // The fraction, from its last digit: a partial group first, padded with zeros.
    let mut n_fraction = 0;
    let mut rest = fraction;
    let partial = u32::from(scale % 4);
    if partial != 0 {
        let unit = 10u128.pow(partial);
        digits[10 + n_fraction] = ((rest % unit) * 10u128.pow(4 - partial)) as u16;
        rest /= unit;
        n_fraction += 1;
    }
    for _ in 0..(scale / 4).min(10) {
        digits[10 + n_fraction] = (rest % 10_000) as u16;
        rest /= 10_000;
        n_fraction += 1;
    }
    digits[10..10 + n_fraction].reverse();
    // The integer part, least significant group last.
    let mut n_integer = 0;
    let mut rest = integer;
    while rest > 0 && n_integer < 10 {
        digits[9 - n_integer] = (rest % 10_000) as u16;
        rest /= 10_000;
        n_integer += 1;
    }
    let mut used = &digits[10 - n_integer..10 + n_fraction];
    let mut weight = n_integer as i16 - 1;
    while let [0, tail @ ..] = used {
        used = tail;
        weight -= 1;
    }
    while let [head @ .., 0] = used {
        used = head;
    }
    if used.is_empty() {
        weight = 0;
    }
    let sign: u16 = if mantissa < 0 && !used.is_empty() {
        0x4000
    } else {
        0
    };
    buf.put_i32(8 + 2 * used.len() as i32);
    buf.put_u16(used.len() as u16);
    buf.put_i16(weight);
    buf.put_u16(sign);
    buf.put_u16(scale);
    for digit in used {
        buf.put_u16(*digit);
    }
}

/// How a date or timestamp column moves between DuckDB's epoch (1970-01-01)
/// and PostgreSQL's (2000-01-01). Infinities: PostgreSQL stores `infinity` /
/// `-infinity` as the type's MAX / MIN, DuckDB as MAX / -MAX.
struct Epoch {
    /// Days or microseconds from the Unix epoch to PostgreSQL's.
    shift: i64,
    /// The MAX of the stored type (i32 for dates, i64 for timestamps).
    max: i64,
    /// What the value counts, for errors.
    unit: &'static str,
}

const DATE_EPOCH: Epoch = Epoch {
    shift: 10_957,
    max: i32::MAX as i64,
    unit: "days",
};
const TIMESTAMP_EPOCH: Epoch = Epoch {
    shift: 946_684_800_000_000,
    max: i64::MAX,
    unit: "µs",
};

impl Epoch {
    /// A DuckDB value as PostgreSQL's.
    fn postgres_value(&self, value: i64) -> Result<i64, CodecError> {
        let min = -self.max - 1;
        match value {
            v if v == self.max => Ok(self.max),
            v if v == -self.max => Ok(min),
            v => v
                .checked_sub(self.shift)
                .filter(|v| *v >= min)
                .ok_or(CodecError::PostgresRange {
                    value: v,
                    unit: self.unit,
                }),
        }
    }

    /// A PostgreSQL value as DuckDB's.
    fn duckdb_value(&self, value: i64) -> Result<i64, CodecError> {
        match value {
            v if v == self.max => Ok(self.max),
            v if v == -self.max - 1 => Ok(-self.max),
            v => {
                v.checked_add(self.shift)
                    .filter(|v| *v < self.max)
                    .ok_or(CodecError::DuckdbRange {
                        value: v,
                        unit: self.unit,
                    })
            }
        }
    }
}

/// A date in DuckDB's days and back; both ends are i32 by construction.
fn date_to_pg(days: i32) -> Result<i32, CodecError> {
    DATE_EPOCH.postgres_value(days.into()).map(|d| d as i32)
}

fn date_from_pg(days: i32) -> Result<i32, CodecError> {
    DATE_EPOCH.duckdb_value(days.into()).map(|d| d as i32)
}

/// The binary COPY signature, flags and header-extension length.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Bytes buffered before a chunk goes to the server.
const COPY_CHUNK: usize = 1 << 20;

/// Binary COPY of the batches into `table`, in one transaction. Rows are
/// encoded column-typed straight from the Arrow arrays into 1 MiB chunks.
pub(super) async fn copy_in(
    client: &mut Client,
    table: &str,
    batches: &std::sync::mpsc::Receiver<Result<RecordBatch, SqlError>>,
) -> Result<u64, Failure> {
    let next = || match batches.recv() {
        Ok(Ok(batch)) => Ok(Some(batch)),
        Ok(Err(e)) => Err(Failure::from(e).context("DuckDB query")),
        Err(_) => Ok(None),
    };
    let Some(first) = next()? else { return Ok(0) };
    let names: Vec<String> = first
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let columns = names
        .iter()
        .map(|n| quote_ident(n))
        .collect::<Vec<_>>()
        .join(", ");
    let tx = client.transaction().await.map_err(|e| pg_failure(&e))?;
    let target = tx
        .prepare(&format!(
            "SELECT {columns} FROM {} LIMIT 0",
            quote_path(table)
        ))
        .await
        .map_err(|e| pg_failure(&e).context(format!("table `{table}`")))?;
    let types: Vec<Type> = target.columns().iter().map(|c| c.type_().clone()).collect();
    let field_count =
        i16::try_from(types.len()).map_err(|_| Failure::permanent("too many columns"))?;
    let sink = tx
        .copy_in::<_, bytes::Bytes>(&format!(
            "COPY {} ({columns}) FROM STDIN (FORMAT binary)",
            quote_path(table)
        ))
        .await
        .map_err(|e| pg_failure(&e))?;
    pin_mut!(sink);
    let mut buf = BytesMut::with_capacity(COPY_CHUNK + (64 << 10));
    buf.put_slice(COPY_HEADER);
    let mut batch = Some(first);
    let mut rows = 0u64;
    while let Some(b) = batch {
        let converted = b
            .columns()
            .iter()
            .zip(&names)
            .zip(&types)
            .map(|((array, name), ty)| Column::convert(name, array, ty))
            .collect::<Result<Vec<_>, Failure>>()?;
        for row in 0..b.num_rows() {
            buf.put_i16(field_count);
            for column in &converted {
                column.encode(row, &mut buf)?;
            }
            if buf.len() >= COPY_CHUNK {
                sink.send(buf.split().freeze())
                    .await
                    .map_err(|e| pg_failure(&e))?;
            }
        }
        rows += b.num_rows() as u64;
        batch = next()?;
    }
    buf.put_i16(-1);
    sink.send(buf.split().freeze())
        .await
        .map_err(|e| pg_failure(&e))?;
    let copied = sink.finish().await.map_err(|e| pg_failure(&e))?;
    if copied != rows {
        return Err(Failure::retryable(format!(
            "the server copied {copied} rows of {rows}"
        )));
    }
    tx.commit().await.map_err(|e| pg_failure(&e))?;
    Ok(rows)
}

/// The Arrow schema a Postgres result becomes in DuckDB.
pub(super) fn arrow_schema(columns: &[(String, Type)]) -> Result<Schema, UnsupportedType> {
    let fields = columns
        .iter()
        .map(|(name, ty)| {
            let data_type = match *ty {
                Type::BOOL => DataType::Boolean,
                Type::INT2 => DataType::Int16,
                Type::INT4 => DataType::Int32,
                Type::INT8 => DataType::Int64,
                Type::FLOAT4 => DataType::Float32,
                Type::FLOAT8 => DataType::Float64,
                // numeric has no fixed scale; 28 integer and 10 fraction digits.
                Type::NUMERIC => DataType::Decimal128(38, 10),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DataType::Utf8,
                Type::DATE => DataType::Date32,
                Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
                Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                _ => {
                    return Err(UnsupportedType {
                        column: name.clone(),
                        ty: ty.clone(),
                    });
                }
            };
            Ok(Field::new(name, data_type, true))
        })
        .collect::<Result<Vec<_>, UnsupportedType>>()?;
    Ok(Schema::new(fields))
}

pub(super) fn duckdb_type(data_type: &DataType) -> &'static str {
    match data_type {
        DataType::Boolean => "BOOLEAN",
        DataType::Int16 => "SMALLINT",
        DataType::Int32 => "INTEGER",
        DataType::Int64 => "BIGINT",
        DataType::Float32 => "REAL",
        DataType::Float64 => "DOUBLE",
        DataType::Decimal128(_, _) => "DECIMAL(38,10)",
        DataType::Date32 => "DATE",
        DataType::Timestamp(_, Some(_)) => "TIMESTAMPTZ",
        DataType::Timestamp(_, None) => "TIMESTAMP",
        _ => "VARCHAR",
    }
}

/// Builders for one batch of extracted rows.
pub(crate) enum Builder {
    Bool(BooleanBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Numeric(Vec<Option<i128>>),
    Text(StringBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder, bool),
}

/// Decodes a binary `numeric` field (base-10000 digits) to the mantissa of a
/// `DECIMAL(38, 10)`: rounded half away from zero past 10 fractional digits; an
/// error for NaN, infinities and values of more than 28 integer digits.
pub(crate) fn numeric_mantissa(field: &[u8]) -> Result<i128, CodecError> {
    let word = |at: usize| {
        field
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let (Some(ndigits), Some(weight), Some(sign), Some(dscale)) =
        (word(0), word(2), word(4), word(6))
    else {
        return Err(CodecError::NumericHeader(field.len()));
    };
    let negative = match sign {
        0x0000 => false,
        0x4000 => true,
        0xC000 => return Err(CodecError::NumericNan),
        0xD000 | 0xF000 => return Err(CodecError::NumericInfinity),
        other => return Err(CodecError::NumericSign(other)),
    };
    let digits = field.get(8..).unwrap_or_default();
    if digits.len() != 2 * usize::from(ndigits) {
        return Err(CodecError::NumericDigits {
            bytes: field.len(),
            digits: ndigits,
        });
    }
    // Accumulate at scale 8 (two base-10000 digits after the point); the third
    // digit after the point gives the last two decimals and the rounding.
    let first_exponent = i32::from(weight as i16) + 2;
    let (mut acc, mut last_exponent, mut third) = (0i128, 0i32, 0u16);
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let digit = u16::from_be_bytes([pair[0], pair[1]]);
        if digit >= 10_000 {
            return Err(CodecError::NumericDigit(digit));
        }
        let exponent = first_exponent - i as i32;
        if exponent < 0 {
            if exponent == -1 {
                third = digit;
            }
            // Past scale 12: only checked (found by the numeric fuzz target).
            continue;
        }
        acc = acc
            .checked_mul(10_000)
            .and_then(|a| a.checked_add(i128::from(digit)))
            .ok_or(CodecError::NumericRange)?;
        last_exponent = exponent;
    }
    // Digits past the display scale are dropped first, as PostgreSQL's own
    // numeric_recv does (its output never has any; found by the numeric fuzz target).
    if dscale < 12 {
        let kept = u32::from(dscale.saturating_sub(8));
        third -= third % 10u16.pow(4 - kept);
    }
    let mantissa = u32::try_from(last_exponent)
        .ok()
        .and_then(|e| 10_000i128.checked_pow(e))
        .and_then(|scale_up| acc.checked_mul(scale_up))
        .map(
            |a| match 10i128.checked_pow(8u32.saturating_sub(u32::from(dscale))) {
                Some(unit) => a - a % unit,
                None => 0,
            },
        )
        .and_then(|a| a.checked_mul(100))
        .and_then(|a| a.checked_add(i128::from(third / 100 + u16::from(third % 100 >= 50))))
        .filter(|m| *m < 10i128.pow(38))
        .ok_or(CodecError::NumericRange)?;
    Ok(if negative { -mantissa } else { mantissa })
}

fn be<const N: usize>(field: &[u8]) -> Result<[u8; N], CodecError> {
    field.try_into().map_err(|_| CodecError::FieldLength {
        got: field.len(),
        expected: N,
    })
}

impl Builder {
    pub(crate) fn for_type(data_type: &DataType) -> Self {
        match data_type {
            DataType::Boolean => Self::Bool(BooleanBuilder::new()),
            DataType::Int16 => Self::I16(Int16Builder::new()),
            DataType::Int32 => Self::I32(Int32Builder::new()),
            DataType::Int64 => Self::I64(Int64Builder::new()),
            DataType::Float32 => Self::F32(Float32Builder::new()),
            DataType::Float64 => Self::F64(Float64Builder::new()),
            DataType::Decimal128(_, _) => Self::Numeric(Vec::new()),
            DataType::Date32 => Self::Date(Date32Builder::new()),
            DataType::Timestamp(_, tz) => {
                Self::Timestamp(TimestampMicrosecondBuilder::new(), tz.is_some())
            }
            _ => Self::Text(StringBuilder::new()),
        }
    }

    /// Appends one binary COPY field (`None`: NULL).
    fn push(&mut self, field: Option<&[u8]>) -> Result<(), CodecError> {
        let Some(f) = field else {
            match self {
                Self::Bool(b) => b.append_null(),
                Self::I16(b) => b.append_null(),
                Self::I32(b) => b.append_null(),
                Self::I64(b) => b.append_null(),
                Self::F32(b) => b.append_null(),
                Self::F64(b) => b.append_null(),
                Self::Numeric(v) => v.push(None),
                Self::Text(b) => b.append_null(),
                Self::Date(b) => b.append_null(),
                Self::Timestamp(b, _) => b.append_null(),
            }
            return Ok(());
        };
        match self {
            Self::Bool(b) => b.append_value(f.first().is_some_and(|v| *v != 0)),
            Self::I16(b) => b.append_value(i16::from_be_bytes(be(f)?)),
            Self::I32(b) => b.append_value(i32::from_be_bytes(be(f)?)),
            Self::I64(b) => b.append_value(i64::from_be_bytes(be(f)?)),
            Self::F32(b) => b.append_value(f32::from_be_bytes(be(f)?)),
            Self::F64(b) => b.append_value(f64::from_be_bytes(be(f)?)),
            Self::Numeric(v) => v.push(Some(numeric_mantissa(f)?)),
            Self::Text(b) => b.append_value(std::str::from_utf8(f).map_err(CodecError::Text)?),
            Self::Date(b) => b.append_value(date_from_pg(i32::from_be_bytes(be(f)?))?),
            Self::Timestamp(b, _) => {
                b.append_value(TIMESTAMP_EPOCH.duckdb_value(i64::from_be_bytes(be(f)?))?)
            }
        }
        Ok(())
    }

    /// The column built so far, of `data_type`; the builder starts afresh.
    pub(crate) fn finish(&mut self, data_type: &DataType) -> ArrayRef {
        match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::I16(b) => Arc::new(b.finish()),
            Self::I32(b) => Arc::new(b.finish()),
            Self::I64(b) => Arc::new(b.finish()),
            Self::F32(b) => Arc::new(b.finish()),
            Self::F64(b) => Arc::new(b.finish()),
            Self::Numeric(v) => {
                Arc::new(Decimal128Array::from(std::mem::take(v)).with_data_type(data_type.clone()))
            }
            Self::Text(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish()),
            Self::Timestamp(b, tz) => {
                let a = b.finish();
                if *tz {
                    Arc::new(a.with_timezone("UTC"))
                } else {
                    Arc::new(a)
                }
            }
        }
    }
}

/// Parses binary COPY tuples from `data` (header already consumed), appending
/// each complete tuple to `builders`; returns the bytes consumed and the rows
/// read, and whether the trailer was seen.
pub(crate) fn parse_tuples(
    data: &[u8],
    builders: &mut [Builder],
    max_rows: usize,
    fields: &mut Vec<Option<std::ops::Range<usize>>>,
) -> Result<(usize, usize, bool), CodecError> {
    let (mut at, mut rows) = (0usize, 0usize);
    while rows < max_rows {
        let Some(count) = data.get(at..at + 2) else {
            break;
        };
        let count = i16::from_be_bytes(be(count)?);
        if count == -1 {
            return Ok((at + 2, rows, true));
        }
        if usize::try_from(count).ok() != Some(builders.len()) {
            return Err(CodecError::TupleFields {
                count,
                expected: builders.len(),
            });
        }
        // Find the tuple's end before appending anything, so a partial tuple waits for more data.
        let mut end = at + 2;
        fields.clear();
        for _ in 0..builders.len() {
            let Some(len) = data.get(end..end + 4) else {
                return Ok((at, rows, false));
            };
            let len = i32::from_be_bytes(be(len)?);
            end += 4;
            if len < 0 {
                fields.push(None);
            } else {
                let len = len as usize;
                if data.len() < end + len {
                    return Ok((at, rows, false));
                }
                fields.push(Some(end..end + len));
                end += len;
            }
        }
        for (builder, field) in builders.iter_mut().zip(fields.drain(..)) {
            builder.push(field.map(|r| &data[r]))?;
        }
        at = end;
        rows += 1;
    }
    Ok((at, rows, false))
}

/// Binary COPY out of `query`, decoded straight into Arrow batches of
/// [`EXTRACT_BATCH_ROWS`] and sent to DuckDB.
pub(super) async fn extract(
    client: &Client,
    query: &str,
    schema: &Arc<Schema>,
    batches: std::sync::mpsc::SyncSender<RecordBatch>,
) -> Result<u64, Failure> {
    let stream = client
        .copy_out(&format!("COPY ({query}) TO STDOUT (FORMAT binary)"))
        .await
        .map_err(|e| pg_failure(&e))?;
    pin_mut!(stream);
    let mut builders: Vec<Builder> = schema
        .fields()
        .iter()
        .map(|f| Builder::for_type(f.data_type()))
        .collect();
    let flush = |builders: &mut Vec<Builder>| -> Result<RecordBatch, Failure> {
        let arrays = builders
            .iter_mut()
            .zip(schema.fields())
            .map(|(b, f)| b.finish(f.data_type()))
            .collect();
        RecordBatch::try_new(schema.clone(), arrays).map_err(|e| Failure::retryable(e.to_string()))
    };
    let mut pending = BytesMut::new();
    let mut fields = Vec::with_capacity(builders.len());
    let (mut header_done, mut in_batch, mut total, mut finished) = (false, 0usize, 0u64, false);
    let mut batch_bytes = 0usize;
    while let Some(chunk) = stream.next().await {
        pending.extend_from_slice(&chunk.map_err(|e| pg_failure(&e))?);
        if !header_done {
            if pending.len() < COPY_HEADER.len() {
                continue;
            }
            if pending[..11] != COPY_HEADER[..11] {
                return Err(Failure::retryable(
                    "the server did not send a binary COPY header",
                ));
            }
            let extension = u32::from_be_bytes(be(&pending[15..19])?) as usize;
            let skip = COPY_HEADER.len() + extension;
            if pending.len() < skip {
                continue;
            }
            pending.advance(skip);
            header_done = true;
        }
        loop {
            let (used, rows, trailer) = parse_tuples(
                &pending,
                &mut builders,
                EXTRACT_BATCH_ROWS - in_batch,
                &mut fields,
            )?;
            pending.advance(used);
            in_batch += rows;
            batch_bytes += used;
            if in_batch == EXTRACT_BATCH_ROWS
                || (in_batch > 0 && batch_bytes >= EXTRACT_BATCH_BYTES)
            {
                batches
                    .send(flush(&mut builders)?)
                    .map_err(|_| Failure::retryable("the DuckDB side stopped"))?;
                total += in_batch as u64;
                in_batch = 0;
                batch_bytes = 0;
                continue;
            }
            finished |= trailer;
            break;
        }
    }
    if !finished {
        return Err(Failure::retryable(
            "the binary COPY stream ended without its trailer",
        ));
    }
    if in_batch > 0 {
        batches
            .send(flush(&mut builders)?)
            .map_err(|_| Failure::retryable("the DuckDB side stopped"))?;
        total += in_batch as u64;
    }
    drop(batches);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary `numeric` field from its base-10000 digits.
    fn numeric(digits: &[u16], weight: i16, negative: bool, dscale: u16) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(digits.len() as u16).to_be_bytes());
        out.extend_from_slice(&weight.to_be_bytes());
        out.extend_from_slice(&(if negative { 0x4000u16 } else { 0 }).to_be_bytes());
        out.extend_from_slice(&dscale.to_be_bytes());
        for d in digits {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out
    }

    /// The field body `put_numeric` writes (without its length).
    fn encoded(mantissa: i128, scale: u16) -> Vec<u8> {
        let mut buf = BytesMut::new();
        put_numeric(mantissa, scale, &mut buf);
        let len = i32::from_be_bytes(buf[..4].try_into().expect("length")) as usize;
        assert_eq!(len, buf.len() - 4);
        buf[4..].to_vec()
    }

    #[test]
    fn numerics_encode_to_postgres_base_10000_digits() {
        // 12345.6789: digits 1|2345|6789, weight 1, dscale 4.
        assert_eq!(
            encoded(123_456_789, 4),
            numeric(&[1, 2345, 6789], 1, false, 4)
        );
        // 0.5: one fraction digit 5000, weight -1.
        assert_eq!(encoded(5, 1), numeric(&[5000], -1, false, 1));
        // 0.00000001: the leading zero group is dropped, weight -2.
        assert_eq!(encoded(1, 8), numeric(&[1], -2, false, 8));
        // -100000000: trailing zero groups dropped.
        assert_eq!(encoded(-100_000_000, 0), numeric(&[1], 2, true, 0));
        // Zero has no digits and no sign.
        assert_eq!(encoded(0, 2), numeric(&[], 0, false, 2));
        assert_eq!(encoded(-0, 38), numeric(&[], 0, false, 38));
        // The widest: 38 nines at scale 0 and at scale 38.
        let nines = 10i128.pow(38) - 1;
        assert_eq!(
            encoded(nines, 0),
            numeric(
                &[99, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999],
                9,
                false,
                0
            )
        );
        assert_eq!(
            encoded(-nines, 38),
            numeric(
                &[9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9900],
                -1,
                true,
                38
            )
        );
    }

    #[test]
    fn numerics_round_trip_through_both_directions() {
        let widest = 10i128.pow(38) - 1;
        for m in [
            0,
            1,
            -1,
            5,
            49,
            50,
            123_456_789,
            -987_654_321_012,
            widest,
            -widest,
        ] {
            assert_eq!(numeric_mantissa(&encoded(m, 10)), Ok(m), "{m}");
        }
        // Other scales come back at scale 10.
        assert_eq!(numeric_mantissa(&encoded(12_345, 2)), Ok(1_234_500_000_000));
        // Past 10 fraction digits: rounded half away from zero.
        assert_eq!(numeric_mantissa(&encoded(15, 11)), Ok(2));
        assert_eq!(numeric_mantissa(&encoded(-15, 11)), Ok(-2));
        assert_eq!(numeric_mantissa(&encoded(14, 11)), Ok(1));
        assert_eq!(numeric_mantissa(&encoded(1, 20)), Ok(0));
    }

    #[test]
    fn numerics_decode_to_the_edge_of_decimal_38_10_and_no_further() {
        // 10^27: one digit 1000 at weight 6.
        let big = numeric(&[1000], 6, false, 0);
        assert_eq!(numeric_mantissa(&big), Ok(10i128.pow(37)));
        let nines = [9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9900];
        let big = numeric(&nines, 6, true, 10);
        assert_eq!(
            numeric_mantissa(&big),
            Ok(-(10i128.pow(38) - 1)),
            "28 nines and 10 nines after the point"
        );
        // 10^28 does not fit DECIMAL(38,10).
        let too_big = numeric(&[1], 7, false, 0);
        assert!(numeric_mantissa(&too_big) == Err(CodecError::NumericRange));
        let nan = [0u8, 0, 0, 0, 0xC0, 0, 0, 0];
        assert_eq!(numeric_mantissa(&nan), Err(CodecError::NumericNan));
        assert!(numeric_mantissa(&[0, 1, 0]).is_err());
        // Digits past the display scale (never sent by PostgreSQL) are dropped.
        assert_eq!(
            numeric_mantissa(&numeric(&[1, 2345, 6789], 0, false, 2)),
            Ok(12_300_000_000)
        );
        assert_eq!(
            numeric_mantissa(&numeric(&[0, 0, 0, 50], 0, false, 10)),
            Ok(0)
        );
        assert_eq!(
            numeric_mantissa(&numeric(&[0, 0, 0, 50], 0, false, 11)),
            Ok(1)
        );
        assert!(numeric_mantissa(&numeric(&[10_000], 0, false, 0)).is_err());
        // A malformed digit is refused wherever it is, even past scale 12.
        assert!(numeric_mantissa(&numeric(&[1, 0, 0, 0, 0, 65_535], 0, false, 20)).is_err());
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(
            quote_path("public.category_revenue"),
            "\"public\".\"category_revenue\""
        );
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
