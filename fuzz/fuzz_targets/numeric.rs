//! `extract`'s NUMERIC decoder against rust_decimal's, on arbitrary digits: the
//! same mantissa wherever rust_decimal can hold the value at scale 10, and
//! never a panic. (A digit past 9999 or a wrong length is refused by ours.)
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
        match ours {
            Ok(mantissa) => assert_eq!(mantissa, theirs.mantissa(), "{theirs}"),
            // We refuse malformed fields (digits past 9999, a wrong length)
            // that rust_decimal may read anyway; any other refusal is a bug.
            Err(e) => assert!(e.contains("digit") || e.contains("bytes"), "{theirs}: {e}"),
        }
    }
});
