//! `extract`'s NUMERIC decoder against rust_decimal's, on arbitrary digits: the
//! same mantissa wherever rust_decimal can hold the value at scale 10, and
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rust_decimal::Decimal;
use tokio_postgres::types::{FromSql, Type};

fuzz_target!(|field: &[u8]| {
    let ours = sluice::fuzz::numeric_mantissa(field);
    let Ok(mut theirs) = Decimal::from_sql(&Type::NUMERIC, field) else {
        return;
    };
    theirs.rescale(10);
    if theirs.scale() == 10 {
        assert_eq!(ours, Ok(theirs.mantissa()), "{theirs}");
    }
});
