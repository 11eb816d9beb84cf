//! The host side of the guest's path and key arguments (bucket `put`/`get`
//! staging paths, object keys, Postgres table names). Staging holds a symlink to
//! a directory outside it; whatever the guest passes, the path used is inside
//! staging and nothing is created outside.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sluice::fuzz::{bucket_key, postgres_table, staging_path};

struct Fixture {
    _root: tempfile::TempDir,
    staging: PathBuf,
    outside: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = tempfile::tempdir().expect("temp dir");
        let base = root.path().canonicalize().expect("canonical");
        let (staging, outside) = (base.join("staging"), base.join("outside"));
        std::fs::create_dir_all(staging.join("sub")).expect("staging");
        std::fs::create_dir_all(&outside).expect("outside");
        std::fs::write(staging.join("sub/data.csv"), "a\n1\n").expect("file");
        std::os::unix::fs::symlink(&outside, staging.join("out")).expect("dir link");
        std::os::unix::fs::symlink("/etc/hostname", staging.join("hostname")).expect("file link");
        Fixture {
            _root: root,
            staging,
            outside,
        }
    })
}

/// `"a"."b"`: quoted parts joined by dots, each with its quotes doubled.
fn is_quoted_path(s: &str) -> bool {
    let mut chars = s.chars().peekable();
    loop {
        if chars.next() != Some('"') {
            return false;
        }
        loop {
            match chars.next() {
                None => return false,
                Some('"') if chars.peek() == Some(&'"') => {
                    chars.next();
                }
                Some('"') => break,
                Some(_) => {}
            }
        }
        match chars.next() {
            None => return true,
            Some('.') => {}
            Some(_) => return false,
        }
    }
}

fuzz_target!(|input: (bool, &str)| {
    let (write, arg) = input;
    let f = fixture();
    if let Ok(path) = staging_path(&f.staging, arg, write) {
        assert!(
            path.starts_with(&f.staging),
            "{arg:?} -> {}",
            path.display()
        );
        let dir = path.parent().expect("a file has a parent");
        let real = dir.canonicalize().expect("the directory exists");
        assert!(
            real.starts_with(&f.staging),
            "{arg:?} -> {}",
            real.display()
        );
    }
    let created: Vec<_> = std::fs::read_dir(&f.outside)
        .expect("outside")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        created.is_empty(),
        "{arg:?} (write {write}) created {created:?}"
    );

    if let Ok(key) = bucket_key(arg) {
        assert!(!key.split('/').any(|p| p == ".." || p == "."), "{key}");
    }
    let quoted = postgres_table(arg);
    assert!(is_quoted_path(&quoted), "{arg:?} -> {quoted}");
});
