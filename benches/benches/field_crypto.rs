//! Field crypto beside a bare AES-256-GCM call on the same 32-byte value.
//!
//! - `bare aes-gcm`: a prebuilt `Aes256Gcm`, a fresh random nonce, encrypt
//!   then decrypt, no AAD: the floor.
//! - `bare aes-gcm + same-length AAD`: the same with an AAD as long as ours.
//! - `envelope`: our v1 field envelope with a cached field cipher (the
//!   engine's hot path): header, nonce, AAD binding, encrypt, parse, decrypt.
//! - `envelope + value codec`: the same plus typed value encode/decode.
//! - `cold key`: HKDF field-key derivation and key schedule on every call
//!   (what the cache saves).
//!
//! Run: `cargo bench -p vault-benches --bench field_crypto`

#![allow(clippy::unwrap_used, missing_docs)]

use aes_gcm::aead::{Aead, AeadCore, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use vault_server::crypto::{open_field, seal_field, FieldAad, Key256};
use vault_server::engine::Value;
use vault_server::keys::SubjectKeys;

const VALUE: &[u8; 32] = b"ada.lovelace@analytical.engine!!";

fn field_crypto(c: &mut Criterion) {
    let mut g = c.benchmark_group("field_crypto_32B");
    g.throughput(Throughput::Bytes(32));

    let bare = Aes256Gcm::new(Key256::random().expose_secret().into());
    g.bench_function("bare aes-gcm", |b| {
        b.iter(|| {
            let nonce = Aes256Gcm::generate_nonce(&mut rand::thread_rng());
            let ct = bare.encrypt(&nonce, black_box(VALUE.as_slice())).unwrap();
            let pt = bare.decrypt(&nonce, ct.as_slice()).unwrap();
            black_box(pt)
        })
    });

    // The same call with an AAD as long as the envelope's (50 bytes here):
    // the GHASH work the AAD binding needs, without our format around it.
    let aad_bytes = [7u8; 50];
    g.bench_function("bare aes-gcm + same-length AAD", |b| {
        b.iter(|| {
            let nonce = Aes256Gcm::generate_nonce(&mut rand::thread_rng());
            let msg = Payload {
                msg: black_box(VALUE.as_slice()),
                aad: &aad_bytes,
            };
            let ct = bare.encrypt(&nonce, msg).unwrap();
            let pt = bare
                .decrypt(
                    &nonce,
                    Payload {
                        msg: &ct,
                        aad: &aad_bytes,
                    },
                )
                .unwrap();
            black_box(pt)
        })
    });

    let keys = SubjectKeys::new(1, Key256::random());
    let aad = FieldAad {
        region: "eu",
        collection: "users",
        record_id: "user-0001",
        field: "email",
    };
    g.bench_function("envelope", |b| {
        b.iter(|| {
            let cipher = keys.field_cipher("eu", "users", "email");
            let env = seal_field(&cipher, 1, &aad, black_box(VALUE));
            let pt = open_field(&cipher, &aad, &env).unwrap();
            black_box(pt)
        })
    });

    let value = Value::String(String::from_utf8(VALUE.to_vec()).unwrap());
    g.bench_function("envelope + value codec", |b| {
        b.iter(|| {
            let cipher = keys.field_cipher("eu", "users", "email");
            let env = seal_field(&cipher, 1, &aad, &black_box(&value).encode());
            let pt = open_field(&cipher, &aad, &env).unwrap();
            black_box(Value::decode(&pt).unwrap())
        })
    });

    g.bench_function("cold key (derive + schedule + envelope)", |b| {
        b.iter(|| {
            let fresh = SubjectKeys::new(1, keys.key().clone());
            let cipher = fresh.field_cipher("eu", "users", "email");
            let env = seal_field(&cipher, 1, &aad, black_box(VALUE));
            black_box(open_field(&cipher, &aad, &env).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, field_crypto);
criterion_main!(benches);
