#![no_main]
// See pstorage-core/src/fuzzing.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pstorage_core::fuzzing::dirty_log(data));
