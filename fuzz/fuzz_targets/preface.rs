#![no_main]
// See pstorage-rpc/src/fuzzing.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pstorage_rpc::fuzzing::preface(data));
