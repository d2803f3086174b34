//! Key custody through real sockets: M-of-N unseal, sealing, root-key
//! rotation under load and across a SIGKILL, retiring and destroying root
//! keys, subject-key rotation, and erasure that a restored backup does not
//! undo.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic_health::pb::health_check_response::ServingStatus;
use vault_client::{Error, KeyState, Record, UnsealShare, VaultClient};
use vault_server::engine::RewrapOptions;
use vault_server::keys::{Keyring, ShareCollector, UnsealShare as ServerShare};
use vault_server::policy::{Principal, Role};
use vault_server::service::Authenticator;
use vault_server::vault::{OpenOptions, DEV_SHARE_FILE};
use vault_tests::{server_binary, TestVault};

use crate::{health, user};

pub(crate) const CUSTODIAN: &str = "custodian-token";
pub(crate) const SERVICE: &str = "service-token";

/// Production-like tokens: a custodian (custody only) and a data service.
pub(crate) fn auth() -> Authenticator {
    let mut a = Authenticator::new();
    a.add_token(
        CUSTODIAN,
        Principal {
            name: "custodian".into(),
            roles: vec![Role::Custodian],
        },
    );
    a.add_token(
        SERVICE,
        Principal {
            name: "billing".into(),
            roles: vec![Role::Reader, Role::Writer, Role::Admin],
        },
    );
    a
}

fn sealed_error(r: Result<impl std::fmt::Debug, Error>) {
    match r {
        Err(Error::Unavailable(m)) => assert!(m.contains("sealed"), "{m}"),
        other => panic!("expected UNAVAILABLE sealed, got {other:?}"),
    }
}

/// A share with a valid checksum and the right set, whose secret part is
/// altered: only the combined key gives it away.
fn forge(share: &UnsealShare) -> UnsealShare {
    let text = share.expose_secret();
    let (prefix, hex_part) = text.split_at("vault-share-v1:".len());
    let mut b = hex::decode(hex_part).unwrap();
    b[20] ^= 0x5a;
    let mut h = Sha256::new();
    h.update(b"vault/v1/share");
    h.update(&b[..52]);
    let d = h.finalize();
    b[52..].copy_from_slice(&d[..4]);
    UnsealShare::new(format!("{prefix}{}", hex::encode(b)))
}

/// Separation of duties holds on every request, whatever built the
/// credential: a token whose roles hold custody and data (the
/// configuration refuses such a token; here the authenticator is built by
/// hand) is refused every custody and data call through the socket. A
/// custodian reads no data; a data service performs no custody.
#[tokio::test]
async fn custody_and_data_access_stay_apart_on_every_request() {
    const BOTH: &str = "custodian-and-dpo-token";
    let dir = tempfile::tempdir().unwrap();
    let mut a = auth();
    a.add_token(
        BOTH,
        Principal {
            name: "both".into(),
            roles: vec![Role::Custodian, Role::Dpo],
        },
    );
    let vault = TestVault::start_sealed(OpenOptions::dev(dir.path(), "eu".parse().unwrap()), a)
        .await
        .unwrap();
    let both = vault.client_with(BOTH).await;
    let custodian = vault.client_with(CUSTODIAN).await;
    let service = vault.client_with(SERVICE).await;
    let separate = |r: Result<String, Error>| match r {
        Err(Error::PermissionDenied(m)) => assert!(m.contains("separate duties"), "{m}"),
        other => panic!("expected PERMISSION_DENIED (separate duties), got {other:?}"),
    };
    separate(both.init(1, 1).await.map(|_| String::new()));
    let init = custodian.init(1, 1).await.unwrap();
    separate(both.unseal(&init.shares[0]).await.map(|_| String::new()));
    custodian.unseal(&init.shares[0]).await.unwrap();
    vault_server::dev::seed(&vault.engine()).unwrap();
    service.put(&user("u1", "alice")).await.unwrap();

    separate(both.get("users", "u1").await.map(|_| String::new()));
    separate(
        both.access_ledger("alice", 0, 10, 0)
            .await
            .map(|_| String::new()),
    );
    separate(both.erase_subject("alice").await.map(|_| String::new()));
    separate(both.status().await.map(|_| String::new()));
    separate(both.rotate_root_key().await.map(|v| v.to_string()));
    // One duty each.
    assert!(matches!(
        custodian.get("users", "u1").await,
        Err(Error::PermissionDenied(_))
    ));
    assert!(matches!(
        service.rotate_root_key().await,
        Err(Error::PermissionDenied(_))
    ));
    assert_eq!(
        service.get("users", "u1").await.unwrap(),
        user("u1", "alice")
    );
    custodian.status().await.unwrap();
    drop((both, custodian, service));
    vault.stop().await;
}

/// `operator status` asks for a root rotation once the current root key
/// has wrapped as many keys as configured.
#[tokio::test]
async fn status_asks_for_a_root_rotation_past_the_configured_wraps() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = OpenOptions::dev(dir.path(), "eu".parse().unwrap());
    opts.engine.rotate_root_after_wraps = 3;
    let vault = TestVault::start_dev_with(opts).await.unwrap();
    let client = vault.client().await;
    let custodian = vault.custodian().await;
    for i in 0..3 {
        let s = custodian.status().await.unwrap();
        assert!(!s.root_rotation_due, "{i} wraps: {s:?}");
        client
            .put(&user(&format!("r{i}"), &format!("s{i}")))
            .await
            .unwrap();
    }
    let s = custodian.status().await.unwrap();
    assert!(s.root_rotation_due, "{s:?}");
    assert_eq!(s.rotate_root_after_wraps, 3);
    assert_eq!(s.root_keys[0].wraps, 3);
    drop((client, custodian));
    vault.stop().await;
}

/// A keyring file restored from before a change (here a root rotation) is
/// refused at unseal with a clear message; the custodians' override opens
/// it and the unseal's audit event says so.
#[tokio::test]
async fn an_older_keyring_is_refused_at_unseal_unless_overridden() {
    if vault_tests::skip_on_postgres("puts an older keyring file back") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let opts = OpenOptions::dev(dir.path(), "eu".parse().unwrap());
    let keyring_file = opts.keyring_file.clone();
    let vault = TestVault::start_sealed(opts, auth()).await.unwrap();
    let custodian = vault.client_with(CUSTODIAN).await;
    let init = custodian.init(1, 1).await.unwrap();
    let share = &init.shares[0];
    custodian.unseal(share).await.unwrap();
    let before = std::fs::read(&keyring_file).unwrap();
    assert_eq!(custodian.rotate_root_key().await.unwrap(), 2);
    custodian.seal().await.unwrap();
    let current = std::fs::read(&keyring_file).unwrap();
    std::fs::write(&keyring_file, &before).unwrap();

    match custodian.unseal(share).await {
        Err(Error::FailedPrecondition(m)) => assert!(
            m.contains("generation 1, older than generation 2")
                && m.contains("--allow-keyring-rollback"),
            "{m}"
        ),
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    }
    assert!(custodian.status().await.unwrap().sealed);
    let p = custodian.unseal_with(share, true).await.unwrap();
    assert!(!p.sealed);
    assert_eq!(
        custodian.status().await.unwrap().current_root_version,
        Some(1)
    );
    let log = vault.vault.audit_log();
    let events = log.events(0, 1000).unwrap();
    let unseals: Vec<serde_json::Value> = events
        .iter()
        .map(|e| serde_json::from_slice::<serde_json::Value>(e).unwrap())
        .filter(|e| e["operation"] == "unseal")
        .collect();
    let last = unseals.last().unwrap();
    assert_eq!(last["principal"], "custodian", "{last}");
    assert!(
        last["detail"].as_str().unwrap().contains(
            "keyring rollback accepted: keyring generation 1, the data folder had seen 2"
        ),
        "{last}"
    );
    let refused = &unseals[unseals.len() - 2];
    assert_ne!(refused["decision"], "allowed", "{refused}");
    // The custody event names the generation it made.
    let rotation = events
        .iter()
        .map(|e| serde_json::from_slice::<serde_json::Value>(e).unwrap())
        .find(|e| e["operation"] == "rotate_root_key")
        .unwrap();
    assert_eq!(
        rotation["detail"], "version 2; keyring generation 2",
        "{rotation}"
    );
    // The current keyring back: it opens again, no override needed.
    custodian.seal().await.unwrap();
    std::fs::write(&keyring_file, &current).unwrap();
    custodian.unseal(share).await.unwrap();
    drop(custodian);
    vault.stop().await;
}

#[tokio::test]
async fn init_three_of_five_and_unseal_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let vault =
        TestVault::start_sealed(OpenOptions::dev(dir.path(), "eu".parse().unwrap()), auth())
            .await
            .unwrap();
    let custodian = vault.client_with(CUSTODIAN).await;
    let service = vault.client_with(SERVICE).await;

    // Before init: no data, no unseal.
    let s = custodian.status().await.unwrap();
    assert!(!s.initialized && s.sealed);
    sealed_error(service.collections().await);
    assert!(matches!(
        custodian
            .unseal(&UnsealShare::new("vault-share-v1:00"))
            .await,
        Err(Error::InvalidInput(_))
    ));
    // Custody needs the custodian role.
    assert!(matches!(
        service.init(5, 3).await,
        Err(Error::PermissionDenied(_))
    ));
    assert!(matches!(
        custodian.init(2, 3).await,
        Err(Error::InvalidInput(_))
    ));

    let init = custodian.init(5, 3).await.unwrap();
    assert_eq!(init.shares.len(), 5);
    assert_eq!((init.threshold, init.region.as_str()), (3, "eu"));
    assert!(matches!(
        custodian.init(5, 3).await,
        Err(Error::FailedPrecondition(_))
    ));
    let s = custodian.status().await.unwrap();
    assert!(s.initialized && s.sealed);
    assert_eq!((s.threshold, s.shares, s.progress), (3, 5, 0));
    assert_eq!(
        health(&vault.url(), "vault.v1.VaultService").await,
        ServingStatus::NotServing
    );
    assert_eq!(health(&vault.url(), "").await, ServingStatus::NotServing);
    assert_eq!(
        health(&vault.url(), "vault.v1.OperatorService").await,
        ServingStatus::Serving
    );

    // Two shares leave it sealed; it serves no data.
    let shares = &init.shares;
    let p = custodian.unseal(&shares[4]).await.unwrap();
    assert!(p.sealed);
    assert_eq!((p.progress, p.threshold), (1, 3));
    // A repeated share, a corrupted one and a foreign one are refused and
    // do not count.
    let dup = custodian.unseal(&shares[4]).await;
    assert!(
        matches!(dup, Err(Error::InvalidInput(ref m)) if m.contains("already")),
        "{dup:?}"
    );
    let mut typo = shares[2].expose_secret().to_owned();
    let last = typo.pop().unwrap();
    typo.push(if last == '0' { '1' } else { '0' });
    let bad = custodian.unseal(&UnsealShare::new(typo)).await;
    assert!(
        matches!(bad, Err(Error::InvalidInput(ref m)) if m.contains("corrupted")),
        "{bad:?}"
    );
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestVault::start_sealed(
        OpenOptions::dev(other_dir.path(), "eu".parse().unwrap()),
        auth(),
    )
    .await
    .unwrap();
    let foreign = other.client_with(CUSTODIAN).await.init(5, 3).await.unwrap();
    let bad = custodian.unseal(&foreign.shares[0]).await;
    assert!(
        matches!(bad, Err(Error::InvalidInput(ref m)) if m.contains("another set")),
        "{bad:?}"
    );
    // No message echoes share bytes.
    let secret_part = &shares[2].expose_secret()[20..40];
    for e in [&dup, &bad] {
        assert!(!format!("{e:?}").contains(secret_part));
    }
    let p = custodian.unseal(&shares[1]).await.unwrap();
    assert!(p.sealed);
    assert_eq!(p.progress, 2);
    assert_eq!(custodian.status().await.unwrap().progress, 2);
    sealed_error(service.get("users", "x").await);

    // The third share unseals.
    let p = custodian.unseal(&shares[2]).await.unwrap();
    assert!(!p.sealed);
    let s = custodian.status().await.unwrap();
    assert!(!s.sealed);
    assert_eq!(s.current_root_version, Some(1));
    assert!(s.signing_public_key.is_some());
    assert_eq!(
        health(&vault.url(), "vault.v1.VaultService").await,
        ServingStatus::Serving
    );
    assert!(matches!(
        custodian.unseal(&shares[0]).await,
        Err(Error::FailedPrecondition(_))
    ));
    service.create_collection(&users_schema()).await.unwrap();
    service.put(&user("u1", "s1")).await.unwrap();
    // The custodian token reads no data.
    assert!(matches!(
        custodian.get("users", "u1").await,
        Err(Error::PermissionDenied(_))
    ));

    // Seal: data stops; unseal again with three other shares in another order.
    custodian.seal().await.unwrap();
    sealed_error(service.get("users", "u1").await);
    assert_eq!(
        health(&vault.url(), "vault.v1.VaultService").await,
        ServingStatus::NotServing
    );
    assert!(matches!(
        custodian.rotate_root_key().await,
        Err(Error::Unavailable(_))
    ));
    for (i, idx) in [3usize, 0, 1].into_iter().enumerate() {
        let p = custodian.unseal(&shares[idx]).await.unwrap();
        assert_eq!(p.sealed, i < 2);
    }
    assert_eq!(service.get("users", "u1").await.unwrap(), user("u1", "s1"));

    // A forged share (valid checksum, altered secret) is caught only when
    // the key is combined: the progress resets, and good shares still work.
    custodian.seal().await.unwrap();
    custodian.unseal(&shares[0]).await.unwrap();
    custodian.unseal(&shares[1]).await.unwrap();
    let forged = custodian.unseal(&forge(&shares[2])).await;
    assert!(
        matches!(forged, Err(Error::InvalidInput(ref m)) if m.contains("do not open")),
        "{forged:?}"
    );
    let s = custodian.status().await.unwrap();
    assert!(s.sealed);
    assert_eq!(s.progress, 0);
    for idx in [2, 3, 4] {
        custodian.unseal(&shares[idx]).await.unwrap();
    }
    assert_eq!(service.get("users", "u1").await.unwrap(), user("u1", "s1"));

    drop((custodian, service));
    other.stop().await;
    vault.stop().await;
}

/// The dev `users` schema, for a vault that was not seeded.
pub(crate) fn users_schema() -> vault_client::Collection {
    let c = vault_server::dev::users_collection("eu");
    vault_client::Collection {
        name: c.name,
        region: c.region,
        description: c.description,
        retention: None,
        fields: c
            .fields
            .iter()
            .map(|f| vault_client::FieldSchema {
                name: f.name.clone(),
                field_type: match f.field_type {
                    vault_server::engine::FieldType::Timestamp => {
                        vault_client::FieldType::Timestamp
                    }
                    _ => vault_client::FieldType::String,
                },
                category: vault_client::DataCategory::Other,
                indexed: false,
                mask: None,
            })
            .collect(),
    }
}

#[tokio::test]
async fn rotation_under_load_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = OpenOptions::dev(dir.path(), "eu".parse().unwrap());
    // Slow enough that the job overlaps the load for a while.
    opts.engine.rewrap = RewrapOptions {
        batch_size: 25,
        keys_per_second: 2_000,
    };
    let vault = TestVault::start_dev_with(opts).await.unwrap();
    let client = vault.client().await;
    let custodian = vault.custodian().await;
    let subjects = 600;
    let records: Vec<Record> = (0..subjects)
        .map(|i| user(&format!("r{i}"), &format!("s{i}")))
        .collect();
    for chunk in records.chunks(300) {
        client.put_many(chunk).await.unwrap();
    }

    let done = Arc::new(AtomicBool::new(false));
    let ops_during_job = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for worker in 0..3u64 {
        let client = vault.client().await;
        let done = Arc::clone(&done);
        let ops = Arc::clone(&ops_during_job);
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut failures = Vec::new();
            while !done.load(Ordering::SeqCst) {
                n += 1;
                let i = (n * 7 + worker * 101) % subjects;
                let r = if worker == 0 {
                    // Writer: replaces old records and makes new subjects.
                    let rec = if n.is_multiple_of(2) {
                        user(&format!("r{i}"), &format!("s{i}"))
                    } else {
                        user(&format!("new{n}"), &format!("new-s{n}"))
                    };
                    client.put(&rec).await.map(|_| ())
                } else {
                    client
                        .get("users", &format!("r{i}"))
                        .await
                        .map(|got| assert_eq!(got, user(&format!("r{i}"), &format!("s{i}"))))
                };
                if let Err(e) = r {
                    failures.push(e);
                }
                ops.fetch_add(1, Ordering::Relaxed);
            }
            (n, failures)
        }));
    }

    assert_eq!(custodian.rotate_root_key().await.unwrap(), 2);
    let mut ops_at_finish = 0;
    loop {
        let p = custodian.rewrap_status().await.unwrap();
        assert_eq!(p.target_version, 2);
        if p.finished {
            assert_eq!(p.rewrapped, p.pending_at_start);
            assert!(p.pending_at_start >= subjects);
            ops_at_finish = ops_during_job.load(Ordering::SeqCst).max(ops_at_finish);
            break;
        }
        // Do some work of our own between polls: a read.
        client.get("users", "r0").await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    for task in load {
        let (n, failures) = task.await.unwrap();
        assert!(n > 0);
        assert!(failures.is_empty(), "failed requests: {failures:?}");
    }
    assert!(
        ops_at_finish > 10,
        "the load overlapped the job ({ops_at_finish} requests)"
    );

    let keys = custodian.root_keys().await.unwrap();
    assert_eq!(keys.current_version, 2);
    assert_eq!(keys.versions[0].wrapped_subject_keys, 0, "{keys:?}");
    assert!(keys.versions[1].wrapped_subject_keys >= subjects);
    for chunk in records.chunks(200) {
        let ids: Vec<&str> = chunk.iter().map(|r| r.id.as_str()).collect();
        let vault_client::BatchGet {
            records: found,
            missing_ids: missing,
        } = client.get_many("users", &ids, &[]).await.unwrap();
        assert!(missing.is_empty());
        assert_eq!(found, chunk);
    }
    drop((client, custodian));
    vault.stop().await;
}

/// A `vault-server --config` child process and its address.
struct ServerProcess {
    child: Child,
    url: String,
}

async fn spawn_server(config: &Path) -> ServerProcess {
    let mut child = Command::new(server_binary())
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut url = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(rest) = line.strip_prefix("vault-server listening on ") {
            url = rest
                .split_whitespace()
                .next()
                .map(|a| format!("http://{a}"));
            break;
        }
    }
    ServerProcess {
        child,
        url: url.expect("listening line"),
    }
}

fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[tokio::test]
async fn rewrap_resumes_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vault.toml");
    std::fs::write(
        &config,
        format!(
            r#"
region = "eu"
listen = "127.0.0.1:0"
data_dir = "{data}"
keyring_file = "{keyring}"

[rewrap]
batch_size = 10
keys_per_second = 400

[[tokens]]
principal = "custodian"
sha256 = "{custodian}"
roles = ["custodian"]

[[tokens]]
principal = "svc"
sha256 = "{service}"
roles = ["reader", "writer", "admin"]
"#,
            data = dir.path().join("data").display(),
            keyring = dir.path().join("keyring").display(),
            custodian = sha256_hex(CUSTODIAN),
            service = sha256_hex(SERVICE),
        ),
    )
    .unwrap();

    let mut server = spawn_server(&config).await;
    let custodian = VaultClient::connect(server.url.clone(), CUSTODIAN)
        .await
        .unwrap();
    let service = VaultClient::connect(server.url.clone(), SERVICE)
        .await
        .unwrap()
        .with_purpose(Some(vault_tests::PURPOSE))
        .unwrap();
    let init = custodian.init(3, 2).await.unwrap();
    custodian.unseal(&init.shares[0]).await.unwrap();
    custodian.unseal(&init.shares[2]).await.unwrap();
    service.create_collection(&users_schema()).await.unwrap();
    let subjects = 300u64;
    let records: Vec<Record> = (0..subjects)
        .map(|i| user(&format!("r{i}"), &format!("s{i}")))
        .collect();
    service.put_many(&records).await.unwrap();

    custodian.rotate_root_key().await.unwrap();
    let before_kill = loop {
        let p = custodian.rewrap_status().await.unwrap();
        assert!(
            !p.finished,
            "the job finished before the kill; slow it down"
        );
        if p.rewrapped >= 40 {
            break p;
        }
        custodian.status().await.unwrap();
    };
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();
    drop((custodian, service));

    let server = spawn_server(&config).await;
    let custodian = VaultClient::connect(server.url.clone(), CUSTODIAN)
        .await
        .unwrap();
    let service = VaultClient::connect(server.url.clone(), SERVICE)
        .await
        .unwrap()
        .with_purpose(Some(vault_tests::PURPOSE))
        .unwrap();
    assert!(custodian.status().await.unwrap().sealed);
    sealed_error(service.get("users", "r0").await);
    custodian.unseal(&init.shares[1]).await.unwrap();
    custodian.unseal(&init.shares[0]).await.unwrap();
    let resumed = custodian.rewrap_status().await.unwrap();
    assert!(
        resumed.rewrapped >= before_kill.rewrapped,
        "resumed from its cursor: {resumed:?} after {before_kill:?}"
    );
    assert!(!resumed.finished);
    let end = loop {
        let p = custodian.rewrap_status().await.unwrap();
        if p.finished {
            break p;
        }
        service.get("users", "r1").await.unwrap();
    };
    // Every key re-wrapped exactly once across the crash: none skipped,
    // none twice.
    assert_eq!(end.pending_at_start, subjects);
    assert_eq!(end.rewrapped, subjects);
    assert_eq!(end.examined, subjects);
    let keys = custodian.root_keys().await.unwrap();
    assert_eq!(keys.versions[0].wrapped_subject_keys, 0);
    assert_eq!(
        keys.versions[1].wrapped_subject_keys, subjects,
        "no key lost or doubled"
    );
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    let vault_client::BatchGet {
        records: found,
        missing_ids: missing,
    } = service.get_many("users", &ids, &[]).await.unwrap();
    assert!(missing.is_empty());
    assert_eq!(found, records);
}

/// Opens a dev vault's stored keyring with its one share.
async fn dev_keyring(data_dir: &Path) -> Keyring {
    let share = std::fs::read_to_string(data_dir.join(DEV_SHARE_FILE)).unwrap();
    let mut c = ShareCollector::new();
    c.add(ServerShare::parse(&share).unwrap()).unwrap();
    let key = c.combine().unwrap();
    let file = vault_tests::stored_keyring(data_dir).await;
    Keyring::unseal(&file, &key, &"eu".parse().unwrap()).unwrap()
}

#[tokio::test]
async fn retired_versions_wrap_nothing_and_destroyed_ones_leave_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    let custodian = vault.custodian().await;
    client.put(&user("r1", "s1")).await.unwrap();
    let err = custodian.retire_root_key(1).await;
    assert!(
        matches!(err, Err(Error::FailedPrecondition(ref m)) if m.contains("current")),
        "{err:?}"
    );
    assert_eq!(custodian.rotate_root_key().await.unwrap(), 2);
    while !custodian.rewrap_status().await.unwrap().finished {
        client.get("users", "r1").await.unwrap();
    }
    let v1 = dev_keyring(dir.path())
        .await
        .root_key(1)
        .unwrap()
        .expose_secret()
        .to_vec();
    custodian.retire_root_key(1).await.unwrap();
    // New subjects after the retirement: wrapped under version 2 only.
    for i in 2..20 {
        client
            .put(&user(&format!("r{i}"), &format!("s{i}")))
            .await
            .unwrap();
    }
    let keys = custodian.root_keys().await.unwrap();
    assert_eq!(keys.versions[0].state, KeyState::Retired);
    assert_eq!(keys.versions[0].wrapped_subject_keys, 0);
    assert_eq!(keys.versions[1].wrapped_subject_keys, 19);
    custodian.destroy_root_key(1).await.unwrap();
    let keys = custodian.root_keys().await.unwrap();
    assert_eq!(keys.versions[0].state, KeyState::Destroyed);
    let kr = dev_keyring(dir.path()).await;
    assert_eq!(
        kr.root_versions().collect::<Vec<_>>(),
        vec![
            (1, vault_server::keys::KeyState::Destroyed),
            (2, vault_server::keys::KeyState::Active)
        ]
    );
    assert!(kr.root_key(1).is_err());
    assert_ne!(kr.root_key(2).unwrap().expose_secret().to_vec(), v1);
    // Everything still reads, after a restart too (a cold key cache).
    drop((client, custodian));
    vault.stop().await;
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    for i in 1..20 {
        client.get("users", &format!("r{i}")).await.unwrap();
    }
    drop(client);
    vault.stop().await;
}

#[tokio::test]
async fn subject_key_rotation_reencrypts_the_subjects_records() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    let custodian = vault.custodian().await;
    client.put(&user("a1", "alice")).await.unwrap();
    client.put(&user("a2", "alice")).await.unwrap();
    client.put(&user("b1", "bob")).await.unwrap();
    let r = custodian.rotate_subject_key("alice").await.unwrap();
    assert_eq!((r.new_version, r.records, r.fields), (2, 2, 10));
    assert_eq!(
        client.get("users", "a1").await.unwrap(),
        user("a1", "alice")
    );
    assert_eq!(client.get("users", "b1").await.unwrap(), user("b1", "bob"));
    assert!(matches!(
        custodian.rotate_subject_key("nobody").await,
        Err(Error::NotFound(_))
    ));
    drop((client, custodian));
    let names = crate::tamper::names_of(&vault);
    vault.stop().await;
    if vault_tests::skip_on_postgres("the rest reads RocksDB directly") {
        return;
    }
    // On disk: alice's records name key version 2, and only version 2 of
    // her key is left.
    let db = crate::tamper::open_raw(dir.path());
    for id in ["a1", "a2"] {
        let stored = crate::tamper::stored(&db, &names, "users", id);
        assert_eq!(stored.key_version, 2);
    }
    let keys = db.cf_handle("subject_keys").unwrap();
    let alice = names.subject("alice");
    let prefix = vault_server::storage::subject_key_prefix(names.bucket(&alice), &alice);
    let rows: Vec<_> = db
        .prefix_iterator_cf(keys, &prefix)
        .map(|r| r.unwrap().0.to_vec())
        .take_while(|k| k.starts_with(&prefix))
        .collect();
    assert_eq!(rows, vec![crate::tamper::key_row(&names, "alice", 2)]);
}

/// Copies a folder (a stopped vault's data folder) with all it holds.
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn erasure_survives_a_restored_backup() {
    if vault_tests::skip_on_postgres("restores a copy of RocksDB's folder") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    client.put(&user("a1", "alice")).await.unwrap();
    client.put(&user("a2", "alice")).await.unwrap();
    client.put(&user("b1", "bob")).await.unwrap();
    drop(client);
    let names = crate::tamper::names_of(&vault);
    vault.stop().await;
    // A backup of the data (not of the keyring), taken before the erasure.
    copy_dir(&dir.path().join("db"), &backup.path().join("db"));

    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    let custodian = vault.custodian().await;
    assert_eq!(
        client.get("users", "a1").await.unwrap(),
        user("a1", "alice")
    );
    let receipt = client.erase_subject("alice").await.unwrap();
    receipt.verify().unwrap();
    let status = custodian.status().await.unwrap();
    receipt
        .verify_with_key(&status.signing_public_key.unwrap())
        .unwrap();
    assert_eq!(
        (receipt.records_deleted, receipt.key_versions_destroyed),
        (2, 1)
    );
    // It destroyed an epoch of alice's shred bucket; bob's one key was
    // re-wrapped under the next epoch only if bob shares the bucket.
    let bucket = names.bucket(&names.subject("alice"));
    assert!(receipt.shred_bucket < 1024, "{receipt:?}");
    assert_eq!(receipt.shred_bucket, u32::from(bucket));
    assert!(receipt.shred_epoch_destroyed >= 1, "{receipt:?}");
    let bob_shares = names.bucket(&names.subject("bob")) == bucket;
    assert_eq!(receipt.keys_rewrapped, u64::from(bob_shares));
    assert_eq!(receipt.region, "eu");
    assert!(!format!("{receipt:?}").contains("alice"));
    // Unreadable at once (the key was cached), others untouched.
    for id in ["a1", "a2"] {
        assert!(matches!(
            client.get("users", id).await,
            Err(Error::NotFound(_))
        ));
    }
    assert_eq!(client.get("users", "b1").await.unwrap(), user("b1", "bob"));
    drop((client, custodian));
    vault.stop().await;

    // Restore the pre-erasure data folder; keep the current keyring.
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    copy_dir(&backup.path().join("db"), &dir.path().join("db"));
    {
        // The restored folder does hold alice's wrapped key and records.
        let db = crate::tamper::open_raw(dir.path());
        let keys = db.cf_handle("subject_keys").unwrap();
        assert!(db
            .get_cf(keys, crate::tamper::key_row(&names, "alice", 1))
            .unwrap()
            .is_some());
    }
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    let custodian = vault.custodian().await;
    for id in ["a1", "a2"] {
        assert!(matches!(
            client.get("users", id).await,
            Err(Error::NotFound(_))
        ));
    }
    let vault_client::BatchGet {
        records: found,
        missing_ids: missing,
    } = client
        .get_many("users", &["a1", "a2", "b1"], &[])
        .await
        .unwrap();
    assert_eq!(found, vec![user("b1", "bob")]);
    assert_eq!(missing, vec!["a1".to_owned(), "a2".to_owned()]);
    assert_eq!(
        vault.engine().stats().cached_subject_keys,
        1,
        "no erased key was unwrapped"
    );
    // The id can hold new data, under a new key version.
    client.put(&user("a9", "alice")).await.unwrap();
    assert_eq!(
        client.get("users", "a9").await.unwrap(),
        user("a9", "alice")
    );
    assert!(matches!(
        client.get("users", "a1").await,
        Err(Error::NotFound(_))
    ));
    drop((client, custodian));
    vault.stop().await;
}
