//! Fuzz target: `vault_server::fuzzing::reindex_job` (see its docs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vault_server::fuzzing::reindex_job(data);
});
