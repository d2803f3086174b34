//! Benches of the regional data vault. The criterion benches live in
//! `benches/`; run them with `cargo bench -p vault-benches`.

#![forbid(unsafe_code)]
