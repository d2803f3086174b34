//! `vaultctl audit verify` end to end: an export written to a folder (with
//! this test's own hashing and signing), the binary run on it, its exit
//! code, one-line verdict and JSON.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::{json, Value as Json};
use sha2::{Digest as _, Sha256};

const NAME: &str = "vault-eu";

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn leaf_hash(leaf: &[u8]) -> [u8; 32] {
    sha256(&[&[0], leaf])
}

/// RFC 6962 MTH, recursively.
fn root(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => sha256(&[]),
        1 => leaves[0],
        n => {
            // The largest power of two smaller than n.
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            sha256(&[&[1], &root(&leaves[..k]), &root(&leaves[k..])])
        }
    }
}

fn key_id(public: &[u8; 32]) -> [u8; 4] {
    let hash = sha256(&[NAME.as_bytes(), b"\n", &[1], public]);
    [hash[0], hash[1], hash[2], hash[3]]
}

fn write_export(dir: &Path, key: &SigningKey, events: usize, checkpoints: &[usize]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut prev = [0u8; 32];
    for i in 0..events {
        let line = json!({"index": i, "prev": hex::encode(prev), "operation": "get",
                          "principal": "support", "purpose": "ticket", "decision": "allow"})
        .to_string();
        prev = leaf_hash(line.as_bytes());
        lines.push(line);
    }
    sign_over(dir, key, &lines, checkpoints);
    let public = key.verifying_key().to_bytes();
    write_events(dir, &lines);
    let mut encoded = vec![1u8];
    encoded.extend_from_slice(&public);
    let verifier = format!(
        "{NAME}+{}+{}\n",
        hex::encode(key_id(&public)),
        BASE64.encode(encoded)
    );
    std::fs::write(dir.join("vault-eu.pub"), verifier).unwrap();
    lines
}

fn write_events(dir: &Path, lines: &[String]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("events.jsonl"), text).unwrap();
}

/// (exit code, stdout, stderr).
fn vaultctl(dir: &Path, json: bool) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vaultctl"));
    command
        .args(["audit", "verify"])
        .arg(dir)
        .arg("--public-key")
        .arg(dir.join("vault-eu.pub"))
        .env_remove("VAULT_TOKEN")
        .env_remove("VAULT_ADDR");
    if json {
        command.arg("--json");
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn verify_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[7; 32]);
    let mut lines = write_export(dir.path(), &key, 12, &[4, 8, 12]);

    let (code, out, err) = vaultctl(dir.path(), false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("valid: 12 events, 3 checkpoints; latest checkpoint: size 12"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(err, "");

    let (code, out, _) = vaultctl(dir.path(), true);
    assert_eq!(code, 0);
    let report: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report,
        json!({"valid": true, "events": 12, "checkpoints": 3, "fault": null})
    );

    // Change event 5.
    lines[5] = lines[5].replace("ticket", "marketing");
    write_events(dir.path(), &lines);
    let (code, out, _) = vaultctl(dir.path(), false);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("invalid: event 5: modified: "), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let (code, out, _) = vaultctl(dir.path(), true);
    assert_eq!(code, 1);
    let report: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(report["valid"], json!(false));
    assert_eq!(report["events"], json!(12));
    assert_eq!(report["fault"]["index"], json!(5));
    assert_eq!(report["fault"]["kind"], json!("modified"));
    assert!(report["fault"]["detail"].is_string());

    // Truncated.
    let mut lines = write_export(dir.path(), &key, 12, &[4, 8, 12]);
    lines.truncate(10);
    write_events(dir.path(), &lines);
    let (code, out, _) = vaultctl(dir.path(), true);
    assert_eq!(code, 1);
    let report: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(report["fault"]["kind"], json!("truncated"), "{out}");
    assert_eq!(report["fault"]["index"], json!(10), "{out}");

    // Another vault's key: no checkpoint is signed by it.
    let other = tempfile::tempdir().unwrap();
    write_export(other.path(), &SigningKey::from_bytes(&[8; 32]), 1, &[]);
    std::fs::copy(
        other.path().join("vault-eu.pub"),
        dir.path().join("vault-eu.pub"),
    )
    .unwrap();
    let (code, out, _) = vaultctl(dir.path(), false);
    assert_eq!(code, 1);
    assert!(
        out.starts_with("invalid: event 0: bad_signature: "),
        "{out}"
    );
}

#[test]
fn unreadable_input_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[9; 32]);
    write_export(dir.path(), &key, 3, &[3]);
    std::fs::write(dir.path().join("vault-eu.pub"), "not a key\n").unwrap();
    let (code, out, err) = vaultctl(dir.path(), false);
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert!(err.starts_with("error: public key file "), "{err}");

    let empty = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("vault-eu.pub"),
        empty.path().join("vault-eu.pub"),
    )
    .unwrap();
    write_export(empty.path(), &key, 0, &[]);
    std::fs::remove_file(empty.path().join("events.jsonl")).unwrap();
    let (code, out, err) = vaultctl(empty.path(), true);
    assert_eq!(code, 1);
    let body: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(body["error"]["kind"], json!("io"));
    assert!(err.contains("events.jsonl"), "{err}");
}

/// (exit code, stdout) of `audit verify DIR` with more arguments.
fn vaultctl_with(dir: &Path, key_dir: &Path, more: &[&std::ffi::OsStr]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_vaultctl"))
        .args(["audit", "verify"])
        .arg(dir)
        .arg("--public-key")
        .arg(key_dir.join("vault-eu.pub"))
        .args(more)
        .env_remove("VAULT_TOKEN")
        .env_remove("VAULT_ADDR")
        .output()
        .unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8(output.stdout).unwrap() + &String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn a_history_that_forks_from_or_rolls_back_what_the_auditor_saw_fails() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let root = tempfile::tempdir().unwrap();
    let export = |name: &str, events: usize, sizes: &[usize]| {
        let dir = root.path().join(name);
        let lines = write_export(&dir, &key, events, sizes);
        (dir, lines)
    };
    let state = root.path().join("auditor.state");
    let state_arg = |p: &Path| {
        vec![
            std::ffi::OsStr::new("--state").to_owned(),
            p.as_os_str().to_owned(),
        ]
    };
    let run = |dir: &Path, more: Vec<std::ffi::OsString>| {
        let more: Vec<&std::ffi::OsStr> = more.iter().map(|s| s.as_os_str()).collect();
        vaultctl_with(dir, dir, &more)
    };

    // The first verification keeps its latest checkpoint (size 12).
    let (seen, _) = export("seen", 12, &[4, 8, 12]);
    let (code, out) = run(&seen, state_arg(&state));
    assert_eq!(code, 0, "{out}");
    let kept = std::fs::read_to_string(&state).unwrap();
    assert!(kept.starts_with("vault.example/eu/audit\n12\n"), "{kept}");

    // The log grew, consistently: valid, and the state moves on to 16.
    let (grown, _) = export("grown", 16, &[4, 16]);
    let (code, out) = run(&grown, state_arg(&state));
    assert_eq!(code, 0, "{out}");
    assert!(std::fs::read_to_string(&state).unwrap().contains("\n16\n"));

    // A history rewritten and signed anew by the vault's key: on its own
    // it verifies, but not against what the auditor saw.
    let (forked, mut lines) = export("forked", 16, &[]);
    lines[10] = lines[10].replace("ticket", "marketing");
    write_events(&forked, &lines);
    let forked_again = root.path().join("forked-signed");
    let mut rewritten = lines.clone();
    // Re-chain and re-sign over the edited events.
    let mut prev = [0u8; 32];
    for line in &mut rewritten {
        let mut v: Json = serde_json::from_str(line).unwrap();
        v["prev"] = json!(hex::encode(prev));
        *line = v.to_string();
        prev = leaf_hash(line.as_bytes());
    }
    write_export(&forked_again, &key, 0, &[]);
    write_events(&forked_again, &rewritten);
    sign_over(&forked_again, &key, &rewritten, &[16]);
    let (code, out) = run(&forked_again, Vec::new());
    assert_eq!(code, 0, "the forged history alone verifies: {out}");
    let before = std::fs::read(&state).unwrap();
    let (code, out) = run(&forked_again, state_arg(&state));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("trusted state"), "{out}");
    // A failed verification leaves the state as it was.
    assert_eq!(std::fs::read(&state).unwrap(), before);

    // A rollback: a shorter, valid export.
    let (short, _) = export("short", 8, &[4, 8]);
    let (code, out) = run(&short, state_arg(&state));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("truncated"), "{out}");

    // The same with --trusted-checkpoint.
    let trusted = vec![
        std::ffi::OsStr::new("--trusted-checkpoint").to_owned(),
        state.as_os_str().to_owned(),
    ];
    let (code, out) = run(&short, trusted.clone());
    assert_eq!(code, 1, "{out}");
    let (code, out) = run(&grown, trusted);
    assert_eq!(code, 0, "{out}");

    // A trusted file that is not a checkpoint is a fault, not a pass.
    let junk = root.path().join("junk");
    std::fs::write(&junk, "not a checkpoint").unwrap();
    let (code, out) = run(
        &grown,
        vec![
            std::ffi::OsStr::new("--trusted-checkpoint").to_owned(),
            junk.into_os_string(),
        ],
    );
    assert_eq!(code, 1, "{out}");
}

/// Writes checkpoints of `sizes` over `lines` into `dir/checkpoints`.
fn sign_over(dir: &Path, key: &SigningKey, lines: &[String], sizes: &[usize]) {
    let leaves: Vec<[u8; 32]> = lines.iter().map(|l| leaf_hash(l.as_bytes())).collect();
    let public = key.verifying_key().to_bytes();
    std::fs::create_dir_all(dir.join("checkpoints")).unwrap();
    for &size in sizes {
        let body = format!(
            "vault.example/eu/audit\n{size}\n{}\n",
            BASE64.encode(root(&leaves[..size]))
        );
        let mut signature = key_id(&public).to_vec();
        signature.extend_from_slice(&key.sign(body.as_bytes()).to_bytes());
        let note = format!("{body}\n\u{2014} {NAME} {}\n", BASE64.encode(signature));
        std::fs::write(dir.join("checkpoints").join(format!("{size}.cp")), note).unwrap();
    }
}
