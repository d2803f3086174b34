//! Rekey and shares sealed to their custodians, through real sockets and
//! the `vaultctl` binary: `operator rekey` replaces the unseal key (the old
//! shares open nothing afterwards, the data stays), is refused without
//! enough valid old shares, and `operator init`/`rekey --recipient` give
//! shares only their custodian's age identity opens (`unseal --identity`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret as _;
use serde_json::Value as Json;
use vault_client::{Error, UnsealShare, VaultClient};
use vault_server::vault::OpenOptions;
use vault_tests::TestVault;

use crate::custody::{auth, users_schema, CUSTODIAN, SERVICE};
use crate::user;
use crate::vaultctl::vaultctl_at;

async fn sealed_vault(dir: &Path) -> TestVault {
    TestVault::start_sealed(OpenOptions::dev(dir, "eu".parse().unwrap()), auth())
        .await
        .unwrap()
}

/// `vaultctl` with the custodian token.
async fn op(vault: &TestVault, args: &[&str]) -> crate::vaultctl::Run {
    vaultctl_at(&vault.url(), Some(CUSTODIAN), args, None).await
}

/// `vaultctl operator unseal --share-file FILE --identity IDENTITY`.
async fn unseal_with(vault: &TestVault, file: &str, identity: &str) -> crate::vaultctl::Run {
    op(
        vault,
        &[
            "operator",
            "unseal",
            "--share-file",
            file,
            "--identity",
            identity,
        ],
    )
    .await
}

fn files_of(json: &Json) -> Vec<String> {
    json["share_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect()
}

fn assert_private(path: &str) {
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{path}");
}

/// The audit events of `vault` whose operation is `operation`.
fn events(vault: &TestVault, operation: &str) -> Vec<Json> {
    vault
        .vault
        .audit_log()
        .events(0, 100_000)
        .unwrap()
        .iter()
        .map(|e| serde_json::from_slice::<Json>(e).unwrap())
        .filter(|e| e["operation"] == operation)
        .collect()
}

#[tokio::test]
async fn vaultctl_rekey_replaces_the_unseal_key_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let vault = sealed_vault(dir.path()).await;

    // Init 3 of 5 into share files; unseal with three; write data.
    let old_dir = out.path().join("old");
    let init = op(
        &vault,
        &[
            "--json",
            "operator",
            "init",
            "--shares",
            "5",
            "--threshold",
            "3",
            "--share-dir",
            old_dir.to_str().unwrap(),
        ],
    )
    .await
    .json();
    let old = files_of(&init);
    assert_eq!(old.len(), 5);
    for f in &old[..3] {
        op(&vault, &["operator", "unseal", "--share-file", f])
            .await
            .ok();
    }
    let service = vault.client_with(SERVICE).await;
    service.create_collection(&users_schema()).await.unwrap();
    service.put(&user("u1", "s1")).await.unwrap();
    let generation_before = vault.vault.engine().unwrap().keyring().generation();

    // Rekey to 2 of 3: three old shares, one per call, the same split each
    // time; the progress is told until the last.
    let new_dir = out.path().join("new");
    let rekey = |share: &str| {
        vec![
            "--json".to_owned(),
            "operator".into(),
            "rekey".into(),
            "--shares".into(),
            "3".into(),
            "--threshold".into(),
            "2".into(),
            "--share-file".into(),
            share.to_owned(),
            "--share-dir".into(),
            new_dir.to_str().unwrap().to_owned(),
        ]
    };
    let args = rekey(&old[4]);
    let p = op(&vault, &args.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .json();
    assert_eq!(
        (
            p["complete"].clone(),
            p["progress"].clone(),
            p["required"].clone()
        ),
        (Json::Bool(false), Json::from(1), Json::from(3))
    );
    // No file is kept by a call that does not finish the rekey.
    assert!(std::fs::read_dir(&new_dir).unwrap().next().is_none());
    // Another split while this one is in progress is refused.
    let other = op(
        &vault,
        &[
            "operator",
            "rekey",
            "--shares",
            "4",
            "--threshold",
            "2",
            "--share-file",
            &old[3],
        ],
    )
    .await;
    assert!(
        other.error(1).contains("another rekey is in progress"),
        "{other:?}"
    );
    // The same share twice does not count.
    let args = rekey(&old[4]);
    let dup = op(&vault, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(
        dup.code == Some(1) && dup.stderr.contains("already given"),
        "{dup:?}"
    );
    let args = rekey(&old[0]);
    let p = op(&vault, &args.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .json();
    assert_eq!(p["progress"], 2);
    let args = rekey(&old[2]);
    let done = op(&vault, &args.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .json();
    assert_eq!(done["complete"], true);
    assert_eq!(
        (done["threshold"].clone(), done["share_count"].clone()),
        (Json::from(2), Json::from(3))
    );
    assert_eq!(done["sealed"], false);
    let generation = done["keyring_generation"].as_u64().unwrap();
    assert!(generation > generation_before, "{done}");
    let new = files_of(&done);
    assert_eq!(new.len(), 3);
    let old_texts: Vec<String> = old
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    for f in &new {
        assert_private(f);
        let text = std::fs::read_to_string(f).unwrap();
        assert!(text.starts_with("vault-share-v1:"), "{f}");
        assert!(!old_texts.contains(&text));
    }

    // The vault served on: data written before reads back; status tells the
    // new split.
    assert_eq!(service.get("users", "u1").await.unwrap(), user("u1", "s1"));
    service.put(&user("u2", "s2")).await.unwrap();
    let s = op(&vault, &["--json", "operator", "status"]).await.json();
    assert_eq!(
        (
            s["sealed"].clone(),
            s["threshold"].clone(),
            s["shares"].clone()
        ),
        (Json::Bool(false), Json::from(2), Json::from(3))
    );
    // The keyring file names the new set, opens with the new key only.
    let file = vault_tests::stored_keyring(dir.path()).await;
    let (_, custody) = vault_server::keys::Keyring::peek(&file).unwrap();
    assert_eq!((custody.threshold, custody.shares), (2, 3));

    // After a seal the old shares open nothing (each is of another set),
    // the new ones unseal.
    op(&vault, &["operator", "seal"]).await.ok();
    for f in &old[..3] {
        let run = op(&vault, &["operator", "unseal", "--share-file", f]).await;
        assert!(run.error(1).contains("another set of shares"), "{run:?}");
    }
    let s = op(&vault, &["--json", "operator", "status"]).await.json();
    assert_eq!(s["progress"], 0);
    let run = op(&vault, &["operator", "unseal", "--share-file", &new[2]]).await;
    assert!(run.ok().contains("1 of 2"), "{run:?}");
    let run = op(
        &vault,
        &["--json", "operator", "unseal", "--share-file", &new[0]],
    )
    .await;
    assert_eq!(run.json()["sealed"], false);
    assert_eq!(service.get("users", "u1").await.unwrap(), user("u1", "s1"));
    assert_eq!(service.get("users", "u2").await.unwrap(), user("u2", "s2"));

    // One event per rekey request: the split and the generation, never a
    // share (old or new).
    let rekeys = events(&vault, "rekey");
    assert_eq!(rekeys.len(), 5, "{rekeys:?}");
    let last = rekeys
        .iter()
        .find(|e| e["detail"].as_str().unwrap_or("").starts_with("rekeyed"))
        .unwrap();
    assert_eq!(
        last["detail"],
        format!("rekeyed to 2 of 3 shares; keyring generation {generation}")
    );
    let all = serde_json::to_string(&rekeys).unwrap();
    for text in old_texts.iter().chain(
        new.iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect::<Vec<_>>()
            .iter(),
    ) {
        let secret = &text.trim()["vault-share-v1:".len()..];
        assert!(!all.contains(secret));
    }
    drop(service);
    vault.stop().await;
}

/// A share with a valid checksum and the right set whose secret part is
/// altered.
fn forge(share: &UnsealShare) -> UnsealShare {
    let text = share.expose_secret();
    let (prefix, hex_part) = text.split_at("vault-share-v1:".len());
    let mut b = hex::decode(hex_part).unwrap();
    b[25] ^= 1;
    // Recompute the checksum as the server does.
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"vault/v1/share");
    h.update(&b[..52]);
    let d = h.finalize();
    b[52..56].copy_from_slice(&d[..4]);
    UnsealShare::new(format!("{prefix}{}", hex::encode(b)))
}

#[tokio::test]
async fn rekey_is_refused_without_enough_valid_old_shares() {
    let dir = tempfile::tempdir().unwrap();
    let vault = sealed_vault(dir.path()).await;
    let custodian: VaultClient = vault.client_with(CUSTODIAN).await;
    let service = vault.client_with(SERVICE).await;
    let init = custodian.init(5, 3).await.unwrap();
    let shares = &init.shares;

    // Sealed: no rekey (the keyring is not in memory).
    let r = custodian.rekey(&shares[0], 3, 2, &[]).await;
    assert!(
        matches!(r, Err(Error::FailedPrecondition(ref m)) if m.contains("sealed")),
        "{r:?}"
    );
    for s in &shares[..3] {
        custodian.unseal(s).await.unwrap();
    }
    // A data credential may not rekey.
    assert!(matches!(
        service.rekey(&shares[0], 3, 2, &[]).await,
        Err(Error::PermissionDenied(_))
    ));
    // Bad splits are refused before any share counts.
    for (n, m) in [(3, 1), (2, 3), (0, 0), (300, 2)] {
        let r = custodian.rekey(&shares[0], n, m, &[]).await;
        assert!(matches!(r, Err(Error::InvalidInput(_))), "{n} {m}: {r:?}");
    }
    // A share of another vault does not count.
    let other_dir = tempfile::tempdir().unwrap();
    let other = sealed_vault(other_dir.path()).await;
    let foreign = other.client_with(CUSTODIAN).await.init(5, 3).await.unwrap();
    let r = custodian.rekey(&foreign.shares[0], 3, 2, &[]).await;
    assert!(
        matches!(r, Err(Error::InvalidInput(ref m)) if m.contains("another set")),
        "{r:?}"
    );
    other.stop().await;

    // Two valid shares and a forged one: refused at the end, the progress
    // reset, nothing changed.
    let p = custodian.rekey(&shares[3], 3, 2, &[]).await.unwrap();
    assert_eq!((p.complete, p.progress, p.required), (false, 1, 3));
    custodian.rekey(&shares[4], 3, 2, &[]).await.unwrap();
    let r = custodian.rekey(&forge(&shares[0]), 3, 2, &[]).await;
    assert!(
        matches!(r, Err(Error::InvalidInput(ref m)) if m.contains("do not open the keyring")),
        "{r:?}"
    );
    let secret_part = &shares[0].expose_secret()[20..40];
    assert!(!format!("{r:?}").contains(secret_part));
    // Two shares then a cancel: nothing changes either.
    custodian.rekey(&shares[3], 3, 2, &[]).await.unwrap();
    custodian.rekey(&shares[4], 3, 2, &[]).await.unwrap();
    custodian.cancel_rekey().await.unwrap();
    let p = custodian.rekey(&shares[0], 3, 2, &[]).await.unwrap();
    assert_eq!(p.progress, 1, "the cancel dropped the earlier shares");
    // A seal drops a rekey in progress too; the old shares still unseal.
    custodian.seal().await.unwrap();
    for s in &shares[2..5] {
        custodian.unseal(s).await.unwrap();
    }
    let p = custodian.rekey(&shares[1], 3, 2, &[]).await.unwrap();
    assert_eq!(p.progress, 1);
    custodian.cancel_rekey().await.unwrap();
    assert!(!custodian.status().await.unwrap().sealed);
    let s = custodian.status().await.unwrap();
    assert_eq!((s.threshold, s.shares), (3, 5));
    drop((custodian, service));
    vault.stop().await;
}

#[tokio::test]
async fn threshold_one_with_several_shares_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vault = sealed_vault(dir.path()).await;
    let custodian = vault.client_with(CUSTODIAN).await;
    // By the vault…
    let r = custodian.init(3, 1).await;
    assert!(
        matches!(r, Err(Error::InvalidInput(ref m)) if m.contains("every share the whole unseal key")),
        "{r:?}"
    );
    assert!(!custodian.status().await.unwrap().initialized);
    // … and by vaultctl before it asks.
    let run = op(
        &vault,
        &["operator", "init", "--shares", "3", "--threshold", "1"],
    )
    .await;
    assert!(
        run.error(2).contains("every share the whole unseal key"),
        "{run:?}"
    );
    // 1 of 1 (one custodian) stays allowed; a rekey to 1 of N is refused.
    let init = custodian.init(1, 1).await.unwrap();
    custodian.unseal(&init.shares[0]).await.unwrap();
    let r = custodian.rekey(&init.shares[0], 4, 1, &[]).await;
    assert!(
        matches!(r, Err(Error::InvalidInput(ref m)) if m.contains("every share the whole unseal key")),
        "{r:?}"
    );
    let share_file = dir.path().join("one.share");
    std::fs::write(&share_file, init.shares[0].expose_secret()).unwrap();
    let run = op(
        &vault,
        &[
            "operator",
            "rekey",
            "--shares",
            "2",
            "--threshold",
            "1",
            "--share-file",
            share_file.to_str().unwrap(),
        ],
    )
    .await;
    assert!(
        run.error(2).contains("every share the whole unseal key"),
        "{run:?}"
    );
    drop(custodian);
    vault.stop().await;
}

/// A custodian's age key pair: the identity file (mode 0600) and the
/// recipient.
fn custodian_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let id = age::x25519::Identity::generate();
    let path = dir.join(format!("{name}.key"));
    std::fs::write(
        &path,
        format!(
            "# public key: {}\n{}\n",
            id.to_public(),
            id.to_string().expose_secret()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (path, id.to_public().to_string())
}

#[tokio::test]
async fn vaultctl_shares_sealed_to_custodians_open_only_with_their_identity() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let vault = sealed_vault(dir.path()).await;
    let custodian = vault.client_with(CUSTODIAN).await;
    let (ids, recipients): (Vec<PathBuf>, Vec<String>) = ["ana", "bo", "cy"]
        .iter()
        .map(|n| custodian_key(keys.path(), n))
        .unzip();

    // The vault checks every recipient (vaultctl checks them too, so the
    // client API shows the server's own refusal).
    for (list, want) in [
        (
            vec![
                recipients[0].clone(),
                "age1bogus".into(),
                recipients[2].clone(),
            ],
            "recipient 2 is not an age X25519 recipient",
        ),
        (
            vec![recipients[0].clone(), recipients[1].clone()],
            "2 recipients for 3 shares",
        ),
        (
            vec![
                recipients[0].clone(),
                recipients[1].clone(),
                recipients[0].clone(),
            ],
            "recipient 3 repeats recipient 1",
        ),
    ] {
        let r = custodian.init_with_recipients(3, 2, &list).await;
        assert!(
            matches!(r, Err(Error::InvalidInput(ref m)) if m.contains(want)),
            "{want}: {r:?}"
        );
    }
    assert!(!custodian.status().await.unwrap().initialized);

    // Init 2 of 3 with a recipients file: the operator sees ciphertexts only.
    let list = keys.path().join("custodians.txt");
    std::fs::write(
        &list,
        format!(
            "# ana, bo, cy\n{}\n\n{}\n{}\n",
            recipients[0], recipients[1], recipients[2]
        ),
    )
    .unwrap();
    let run = op(
        &vault,
        &[
            "--json",
            "operator",
            "init",
            "--shares",
            "3",
            "--threshold",
            "2",
            "--recipients-file",
            list.to_str().unwrap(),
        ],
    )
    .await;
    let init = run.json();
    assert!(init.get("shares").is_none(), "{init}");
    let sealed: Vec<String> = init["encrypted_shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sealed.len(), 3);
    assert!(!run.stdout.contains("vault-share-v1") && !run.stderr.contains("vault-share-v1"));
    let share_files: Vec<PathBuf> = sealed
        .iter()
        .enumerate()
        .map(|(i, s)| {
            assert!(s.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"), "{s}");
            let path = keys.path().join(format!("from-init-{i}.age"));
            std::fs::write(&path, s).unwrap();
            path
        })
        .collect();

    // A clear share file with no identity is refused by vaultctl with a
    // hint; a custodian's identity opens their share only.
    let f0 = share_files[0].to_str().unwrap();
    let run = op(&vault, &["operator", "unseal", "--share-file", f0]).await;
    assert!(run.error(1).contains("--identity"), "{run:?}");
    let run = unseal_with(&vault, f0, ids[1].to_str().unwrap()).await;
    assert!(run.error(1).contains("another custodian"), "{run:?}");
    let run = unseal_with(&vault, f0, ids[0].to_str().unwrap()).await;
    assert!(run.ok().contains("1 of 2"), "{run:?}");
    // From stdin too (the whole armored file).
    let run = vaultctl_at(
        &vault.url(),
        Some(CUSTODIAN),
        &[
            "--json",
            "operator",
            "unseal",
            "--identity",
            ids[2].to_str().unwrap(),
        ],
        Some(&sealed[2]),
    )
    .await;
    assert_eq!(run.json()["sealed"], false);

    // Rekey to 2 of 2 sealed to two new custodians, into share files:
    // authorised by two old encrypted shares opened with their identities.
    let (new_ids, new_recipients): (Vec<PathBuf>, Vec<String>) = ["dee", "eli"]
        .iter()
        .map(|n| custodian_key(keys.path(), n))
        .unzip();
    let out = keys.path().join("rekeyed");
    let rekey = |share: &Path, id: &Path| {
        vec![
            "--json".to_owned(),
            "operator".into(),
            "rekey".into(),
            "--shares".into(),
            "2".into(),
            "--threshold".into(),
            "2".into(),
            "--share-file".into(),
            share.to_str().unwrap().to_owned(),
            "--identity".into(),
            id.to_str().unwrap().to_owned(),
            "--recipient".into(),
            new_recipients[0].clone(),
            "--recipient".into(),
            new_recipients[1].clone(),
            "--share-dir".into(),
            out.to_str().unwrap().to_owned(),
        ]
    };
    let a = rekey(&share_files[1], &ids[1]);
    let p = op(&vault, &a.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .json();
    assert_eq!(p["progress"], 1);
    let a = rekey(&share_files[0], &ids[0]);
    let done = op(&vault, &a.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .json();
    assert_eq!(done["complete"], true);
    let files = files_of(&done);
    assert_eq!(files.len(), 2);
    for f in &files {
        assert!(f.ends_with(".age"), "{f}");
        assert_private(f);
        let text = std::fs::read_to_string(f).unwrap();
        assert!(
            text.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"),
            "{f}"
        );
        assert!(!text.contains("vault-share-v1"));
    }

    // Sealed again, the old encrypted shares open nothing; the new ones,
    // each opened by its custodian, unseal.
    custodian.seal().await.unwrap();
    let run = unseal_with(&vault, f0, ids[0].to_str().unwrap()).await;
    assert!(run.error(1).contains("another set of shares"), "{run:?}");
    let run = unseal_with(&vault, &files[0], new_ids[0].to_str().unwrap()).await;
    assert!(run.ok().contains("1 of 2"), "{run:?}");
    let run = op(
        &vault,
        &[
            "--json",
            "operator",
            "unseal",
            "--share-file",
            &files[1],
            "--identity",
            new_ids[1].to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(run.json()["sealed"], false);

    // The events say the shares were encrypted, and name no recipient.
    let inits = events(&vault, "init");
    let ok_init = inits.iter().find(|e| e["decision"] == "allowed").unwrap();
    assert_eq!(
        ok_init["detail"],
        "2 of 3 shares; shares encrypted to 3 age recipients"
    );
    let rekeys = serde_json::to_string(&events(&vault, "rekey")).unwrap();
    assert!(rekeys.contains("encrypted to 2 age recipients"), "{rekeys}");
    for r in recipients.iter().chain(&new_recipients) {
        assert!(!rekeys.contains(r.as_str()));
    }
    drop(custodian);
    vault.stop().await;
}
