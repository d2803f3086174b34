//! `vaultctl operator …` and `vaultctl subject erase` against real servers:
//! init with share files, unseal from a file and from stdin, seal, status,
//! rotation with `rewrap-status --wait`, keys, retire, destroy, subject-key
//! rotation and erasure with a verified receipt.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value as Json;
use vault_server::vault::OpenOptions;
use vault_tests::TestVault;

use crate::custody::{auth, CUSTODIAN, SERVICE};
use crate::user;
use crate::vaultctl::{vaultctl, vaultctl_at};

#[tokio::test]
async fn vaultctl_init_unseal_seal_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let shares_dir = tempfile::tempdir().unwrap();
    let vault =
        TestVault::start_sealed(OpenOptions::dev(dir.path(), "eu".parse().unwrap()), auth())
            .await
            .unwrap();
    let url = vault.url();
    let op = |args: &'static [&'static str]| vaultctl_at(&url, Some(CUSTODIAN), args, None);

    let s = op(&["--json", "operator", "status"]).await.json();
    assert_eq!(s["initialized"], false);
    assert_eq!(s["sealed"], true);

    // A data token may not initialise.
    let run = vaultctl_at(
        &url,
        Some(SERVICE),
        &["operator", "init", "--shares", "3", "--threshold", "2"],
        None,
    )
    .await;
    assert!(
        run.error(1).contains("may not perform key custody"),
        "{run:?}"
    );

    let share_dir = shares_dir.path().join("shares");
    let share_dir_arg = share_dir.to_str().unwrap();
    let run = vaultctl_at(
        &url,
        Some(CUSTODIAN),
        &[
            "--json",
            "operator",
            "init",
            "--shares",
            "3",
            "--threshold",
            "2",
            "--share-dir",
            share_dir_arg,
        ],
        None,
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let init: Json = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(init["threshold"], 2);
    let files: Vec<String> = init["share_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(files.len(), 3);
    let mut shares = Vec::new();
    for f in &files {
        let meta = std::fs::metadata(f).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{f}");
        let text = std::fs::read_to_string(f).unwrap();
        assert!(text.starts_with("vault-share-v1:"));
        // Shares are not printed when written to files.
        assert!(!run.stdout.contains(text.trim()) && !run.stderr.contains(text.trim()));
        shares.push(text);
    }
    let again = op(&["operator", "init", "--shares", "3", "--threshold", "2"]).await;
    assert!(again.error(1).contains("already initialised"), "{again:?}");

    // Sealed: data calls fail with a hint.
    let run = vaultctl_at(&url, Some(SERVICE), &["collection", "list"], None).await;
    assert!(run.error(1).contains("sealed"), "{run:?}");

    // One share from a file, one from stdin.
    let run = vaultctl_at(
        &url,
        Some(CUSTODIAN),
        &["operator", "unseal", "--share-file", &files[1]],
        None,
    )
    .await;
    assert!(run.ok().contains("1 of 2"), "{run:?}");
    let run = vaultctl_at(
        &url,
        Some(CUSTODIAN),
        &["--json", "operator", "unseal"],
        Some(&shares[2]),
    )
    .await;
    let p = run.json();
    assert_eq!(p["sealed"], false);
    let s = op(&["--json", "operator", "status"]).await.json();
    assert_eq!(s["sealed"], false);
    assert_eq!(s["current_root_version"], 1);
    assert_eq!(s["threshold"], 2);
    assert_eq!(s["shares"], 3);

    // A bad share is a one-line error that does not echo it.
    op(&["operator", "seal"]).await.ok();
    let run = vaultctl_at(
        &url,
        Some(CUSTODIAN),
        &["operator", "unseal"],
        Some("vault-share-v1:abcdef\n"),
    )
    .await;
    let msg = run.error(1);
    assert!(!msg.contains("abcdef"), "{msg}");
    let s = op(&["--json", "operator", "status"]).await.json();
    assert_eq!(
        (s["sealed"].clone(), s["progress"].clone()),
        (Json::Bool(true), Json::from(0))
    );
    let run = vaultctl_at(
        &url,
        Some(CUSTODIAN),
        &["operator", "unseal"],
        Some(&shares[0]),
    )
    .await;
    assert!(run.ok().contains("1 of 2"), "{run:?}");
    vaultctl_at(
        &url,
        Some(CUSTODIAN),
        &["operator", "unseal"],
        Some(&shares[1]),
    )
    .await
    .ok();
    let run = vaultctl_at(&url, Some(SERVICE), &["collection", "list"], None).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    vault.stop().await;
}

/// `vaultctl` with the development custodian's token.
async fn custody(vault: &TestVault, args: &[&str]) -> crate::vaultctl::Run {
    vaultctl_at(&vault.url(), Some(vault_tests::CUSTODIAN_TOKEN), args, None).await
}

#[tokio::test]
async fn vaultctl_rotate_keys_retire_destroy_and_erase() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    for i in 0..20 {
        client
            .put(&user(&format!("r{i}"), &format!("s{i}")))
            .await
            .unwrap();
    }
    drop(client);

    assert_eq!(
        custody(&vault, &["--json", "operator", "rotate", "root"])
            .await
            .json()["version"],
        2
    );
    let p = custody(&vault, &["--json", "operator", "rewrap-status", "--wait"])
        .await
        .json();
    assert_eq!(p["finished"], true);
    assert_eq!(p["target_version"], 2);
    assert_eq!(p["rewrapped"], 20);
    let keys = custody(&vault, &["--json", "operator", "keys"])
        .await
        .json();
    assert_eq!(keys["current_version"], 2);
    assert_eq!(keys["versions"][0]["wrapped_subject_keys"], 0);
    assert_eq!(keys["versions"][1]["wrapped_subject_keys"], 20);
    let table = custody(&vault, &["operator", "keys"]).await;
    assert!(table.ok().contains("active"), "{table:?}");

    let run = custody(&vault, &["operator", "destroy", "1"]).await;
    assert!(run.error(1).contains("retired"), "{run:?}");
    custody(&vault, &["operator", "retire", "1"]).await.ok();
    custody(&vault, &["operator", "destroy", "1"]).await.ok();
    let keys = custody(&vault, &["--json", "operator", "keys"])
        .await
        .json();
    assert_eq!(keys["versions"][0]["state"], "destroyed");

    let r = custody(&vault, &["--json", "operator", "rotate", "subject", "s3"])
        .await
        .json();
    assert_eq!(
        (r["new_version"].clone(), r["records"].clone()),
        (Json::from(2), Json::from(1))
    );
    vaultctl(&vault, &["get", "users", "r3"]).await.ok();

    let receipt = vaultctl(&vault, &["--json", "subject", "erase", "s3"])
        .await
        .json();
    assert_eq!(receipt["verified"], true);
    assert_eq!(receipt["records_deleted"], 1);
    assert_eq!(receipt["key_versions_destroyed"], 2);
    assert_eq!(receipt["region"], "eu");
    // The receipt names s3's shred bucket and the epoch of its key that the
    // erasure destroyed; the other subjects of the bucket (one key each)
    // were re-wrapped under the next epoch.
    let names = crate::tamper::names_of(&vault);
    let bucket_of = |s: &str| names.bucket(&names.subject(s));
    let others_in = |bucket: u16, erased: &[&str]| {
        (0..20)
            .map(|i| format!("s{i}"))
            .filter(|s| !erased.contains(&s.as_str()) && bucket_of(s) == bucket)
            .count()
    };
    assert_eq!(receipt["shred_bucket"], bucket_of("s3"));
    assert!(receipt["shred_bucket"].as_u64().unwrap() < 1024);
    assert!(receipt["shred_epoch_destroyed"].as_u64().unwrap() >= 1);
    assert_eq!(
        receipt["keys_rewrapped"],
        others_in(bucket_of("s3"), &["s3"])
    );
    let text = vaultctl(&vault, &["subject", "erase", "s4"]).await;
    let text = text.ok();
    assert!(text.contains("receipt signature: verified"), "{text}");
    assert!(
        text.contains(&format!("\nshred bucket: {}\n", bucket_of("s4"))),
        "{text}"
    );
    assert!(text.contains("\nbucket key epoch destroyed: "), "{text}");
    assert!(
        text.contains(&format!(
            "\nother keys re-wrapped: {}\n",
            others_in(bucket_of("s4"), &["s3", "s4"])
        )),
        "{text}"
    );
    for id in ["r3", "r4"] {
        let run = vaultctl(&vault, &["get", "users", id]).await;
        assert!(run.error(1).contains("not found"), "{run:?}");
    }
    vaultctl(&vault, &["get", "users", "r5"]).await.ok();

    custody(&vault, &["operator", "seal"]).await.ok();
    let run = vaultctl(&vault, &["get", "users", "r5"]).await;
    assert!(run.error(1).contains("sealed"), "{run:?}");
    let share = dir.path().join(vault_server::vault::DEV_SHARE_FILE);
    custody(
        &vault,
        &[
            "operator",
            "unseal",
            "--share-file",
            share.to_str().unwrap(),
        ],
    )
    .await
    .ok();
    vaultctl(&vault, &["get", "users", "r5"]).await.ok();
    vault.stop().await;
}
