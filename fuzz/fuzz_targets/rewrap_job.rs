//! Fuzz target: `vault_server::fuzzing::rewrap_job` (see its docs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vault_server::fuzzing::rewrap_job(data);
});
