#![no_main]
// See daemons/src/fuzzing.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pstorage_daemons::fuzzing::nbd_requests(data));
