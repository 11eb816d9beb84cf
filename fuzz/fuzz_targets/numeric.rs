//! The numeric codecs of `extract` and `copy-in`. On arbitrary bytes, the
//! decoder agrees with rust_decimal's wherever rust_decimal can hold the value
//! at scale 10 (a digit past 9999, a wrong length or an unknown sign word is
//! refused by ours only: the first run found rust_decimal reading sign 0x0011;
//! digits past the display scale are truncated, as by PostgreSQL).
//! Any DECIMAL(38, 10) mantissa survives encoding and decoding unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rust_decimal::Decimal;
use sluice::fuzz::{numeric_field, numeric_mantissa};
use tokio_postgres::types::{FromSql, Type};

fuzz_target!(|input: (&[u8], i128)| {
    let (field, mantissa) = input;
    let ours = numeric_mantissa(field);
    // rust_decimal itself panics on some fields ("Number exceeds maximum value",
    // found by run 3): those only count against it, so catch them quietly.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let theirs = std::panic::catch_unwind(|| {
        Decimal::from_sql(&Type::NUMERIC, field).map(|mut d| {
            d.rescale(10);
            d
        })
    });
    std::panic::set_hook(hook);
    // Where the digits reach past the display scale (never in PostgreSQL's
    // output), PostgreSQL truncates them, as ours does, and rust_decimal rounds
    // (run 4: 4.5632 at dscale 0); compare only where the two rules agree.
    let word = |at: usize| {
        field
            .get(at..at + 2)
            .map(|b| i32::from(u16::from_be_bytes([b[0], b[1]])))
    };
    // And rust_decimal rounds twice past 28 digits (run 7: ...10242048 came
    // out ...10242 1 at scale 10), so compare only fields of at most 7
    // base-10000 digits, which it reads exactly.
    let canonical = match (word(0), word(2), word(6)) {
        (Some(ndigits), Some(weight), Some(dscale)) => {
            ndigits <= 7 && 4 * (ndigits - i32::from(weight as u16 as i16) - 1) <= dscale
        }
        _ => true,
    };
    if let (true, Ok(Ok(theirs))) = (canonical, theirs) {
        if theirs.scale() == 10 {
            match &ours {
                Ok(m) => assert_eq!(*m, theirs.mantissa(), "{theirs} from {field:?}"),
                Err(e) => assert!(
                    e.contains("digit") || e.contains("bytes") || e.contains("sign word"),
                    "{theirs}: {e}"
                ),
            }
        }
    }

    let mantissa = mantissa % 10i128.pow(38);
    assert_eq!(numeric_mantissa(&numeric_field(mantissa, 10)), Ok(mantissa));
});
