//! `include/pstorage.h` is generated from this crate by cbindgen and
//! committed; this test fails when it no longer matches the code.
//! `PSTORAGE_BLESS_HEADER=1` rewrites it instead.

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use std::path::Path;

#[test]
fn committed_header_matches_the_code() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("reading pstorage-ffi/cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen failed on pstorage-ffi");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("the header is UTF-8");

    let header = crate_dir.join("../include/pstorage.h");
    if std::env::var_os("PSTORAGE_BLESS_HEADER").is_some() {
        std::fs::write(&header, &generated).expect("writing include/pstorage.h");
        return;
    }
    let committed = std::fs::read_to_string(&header).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map(|i| i + 1)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()) + 1);
        panic!(
            "include/pstorage.h is out of date with pstorage-ffi/src (first difference at line {line}); \
             regenerate it with `PSTORAGE_BLESS_HEADER=1 cargo test -p pstorage-ffi --test header` and commit it"
        );
    }
}
