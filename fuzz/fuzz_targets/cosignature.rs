//! Fuzz target: `vault_server::fuzzing::cosignature` (see its docs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vault_server::fuzzing::cosignature(data);
});
