//! The manifest parser on arbitrary text: it never panics, every error names the
//! file, and a line it reports exists.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sluice::manifest::Manifest;

fuzz_target!(|text: &str| {
    if let Err(e) = Manifest::parse(Path::new("dag.toml"), text) {
        assert!(e.to_string().starts_with("dag.toml"), "{e}");
        if let Some(line) = e.line {
            let lines = text.split('\n').count();
            assert!((1..=lines).contains(&line), "line {line} of {lines}: {e}");
        }
    }
});
