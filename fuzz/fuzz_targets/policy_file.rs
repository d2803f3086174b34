//! Fuzz target: `vault_server::fuzzing::policy_file` (see its docs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vault_server::fuzzing::policy_file(data);
});
