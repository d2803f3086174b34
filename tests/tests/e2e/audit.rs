//! The audit log through real sockets: every data request leaves one event,
//! the log exported over `AuditService` verifies offline with `vaultctl audit
//! verify` (an implementation of its own, in vault-client), and each kind of
//! tampering with an export, or a raw edit of the audit column family, is
//! caught and named.

use std::path::{Path, PathBuf};

use tokio::process::Command;
use vault_proto::v1 as pb;
use vault_proto::v1::audit_service_client::AuditServiceClient;
use vault_tests::{vaultctl_binary, TestVault, TOKEN};

use crate::user;

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    req
}

/// Exports the log (events, checkpoints) into `dir`; returns the verifier
/// key file.
pub(crate) async fn export(vault: &TestVault, dir: &Path) -> PathBuf {
    let mut raw = AuditServiceClient::connect(vault.url()).await.unwrap();
    let key = raw
        .public_key(authed(pb::AuditPublicKeyRequest {}))
        .await
        .unwrap()
        .into_inner();
    let checkpoints = raw
        .checkpoints(authed(pb::CheckpointsRequest { from_size: 0 }))
        .await
        .unwrap()
        .into_inner()
        .checkpoints;
    // Each page request is itself an event: read up to the size the log
    // had at the first page, as `vaultctl audit export` does.
    let mut events = Vec::new();
    let mut target = None;
    loop {
        let page = raw
            .events(authed(pb::AuditEventsRequest {
                from: events.len() as u64,
                limit: 7,
            }))
            .await
            .unwrap()
            .into_inner();
        let target = *target.get_or_insert(page.tree_size);
        events.extend(page.events);
        if events.len() as u64 >= target {
            break;
        }
    }
    write_export(dir, &events, &checkpoints);
    let key_file = dir.join("vault.vkey");
    std::fs::write(&key_file, format!("{}\n", key.verifier_key)).unwrap();
    key_file
}

fn write_export(dir: &Path, events: &[Vec<u8>], checkpoints: &[String]) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("checkpoints")).unwrap();
    let mut lines = Vec::new();
    for e in events {
        lines.extend_from_slice(e);
        lines.push(b'\n');
    }
    std::fs::write(dir.join("events.jsonl"), lines).unwrap();
    for (i, c) in checkpoints.iter().enumerate() {
        std::fs::write(dir.join("checkpoints").join(format!("{i:06}.note")), c).unwrap();
    }
}

fn read_export(dir: &Path) -> (Vec<Vec<u8>>, Vec<String>) {
    let events = std::fs::read(dir.join("events.jsonl"))
        .unwrap()
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let mut names: Vec<_> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let checkpoints = names
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    (events, checkpoints)
}

/// `vaultctl --json audit verify DIR --public-key KEY`: (valid, fault index, fault kind).
pub(crate) async fn verify(dir: &Path, key: &Path) -> (bool, Option<u64>, Option<String>) {
    let out = Command::new(vaultctl_binary())
        .args(["--json", "audit", "verify"])
        .arg(dir)
        .arg("--public-key")
        .arg(key)
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let json: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout:?} {:?}", String::from_utf8_lossy(&out.stderr)));
    let valid = json["valid"].as_bool().unwrap();
    assert_eq!(out.status.success(), valid, "{json}");
    (
        valid,
        json["fault"]["index"].as_u64(),
        json["fault"]["kind"].as_str().map(str::to_owned),
    )
}

async fn some_traffic(vault: &TestVault, n: usize) {
    let client = vault.client().await;
    for i in 0..n {
        client
            .put(&user(&format!("u{i}"), &format!("s{i}")))
            .await
            .unwrap();
        client.get("users", &format!("u{i}")).await.unwrap();
    }
    assert!(client.get("users", "nobody").await.is_err());
}

#[tokio::test]
async fn every_data_request_leaves_one_event_and_the_export_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let before = vault.engine().audit().size();
    some_traffic(&vault, 5).await;
    // 5 puts, 5 gets, 1 failed get.
    assert_eq!(vault.engine().audit().size() - before, 11);

    let export_dir = tempfile::tempdir().unwrap();
    let key = export(&vault, export_dir.path()).await;
    assert_eq!(verify(export_dir.path(), &key).await, (true, None, None));
    let (events, checkpoints) = read_export(export_dir.path());
    // Everything up to the export's own reads, which are events too.
    assert!(events.len() as u64 >= before + 11);
    assert!(events.len() as u64 <= vault.engine().audit().size());
    let ops: Vec<serde_json::Value> = events
        .iter()
        .map(|e| serde_json::from_slice(e).unwrap())
        .collect();
    for op in [
        "vault.v1.AuditService/PublicKey",
        "vault.v1.AuditService/Checkpoints",
        "vault.v1.AuditService/Events",
    ] {
        assert!(
            ops.iter()
                .any(|e| e["operation"] == op && e["principal"] == "dev-root"),
            "{op}"
        );
    }
    // No value or id leaves the vault in an event.
    for e in &events {
        let text = String::from_utf8_lossy(e);
        assert!(
            !text.contains("@example.eu") && !text.contains("\"u1\""),
            "{text}"
        );
    }

    // The same through vaultctl: export, then verify the export.
    let by_ctl = tempfile::tempdir().unwrap();
    let ctl_dir = by_ctl.path().join("export");
    let out = Command::new(vaultctl_binary())
        .args(["--json", "audit", "export"])
        .arg(&ctl_dir)
        .env("VAULT_ADDR", vault.url())
        .env("VAULT_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let exported: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(exported["events"].as_u64().unwrap() >= events.len() as u64);
    assert_eq!(verify(&ctl_dir, &key).await, (true, None, None));

    // More traffic, a second checkpoint (and the one vaultctl's export
    // had signed): all must be consistent.
    some_traffic(&vault, 2).await;
    let second = tempfile::tempdir().unwrap();
    export(&vault, second.path()).await;
    let (_, both) = read_export(second.path());
    assert_eq!(both.len(), checkpoints.len() + 2);
    assert_eq!(verify(second.path(), &key).await, (true, None, None));
    vault.stop().await;
}

#[tokio::test]
async fn tampered_exports_are_caught_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    some_traffic(&vault, 4).await;
    let good = tempfile::tempdir().unwrap();
    let key = export(&vault, good.path()).await;
    let (events, checkpoints) = read_export(good.path());
    let n = events.len();
    assert!(n >= 9);
    let work = tempfile::tempdir().unwrap();
    let case = |events: Vec<Vec<u8>>, checkpoints: Vec<String>| {
        write_export(work.path(), &events, &checkpoints);
    };

    // Change one event (its principal).
    let target = (3..n)
        .find(|&i| String::from_utf8_lossy(&events[i]).contains("dev-root"))
        .unwrap();
    let mut changed = events.clone();
    let text = String::from_utf8(changed[target].clone()).unwrap();
    changed[target] = text.replace("dev-root", "dev-rooT").into_bytes();
    case(changed, checkpoints.clone());
    let (valid, index, kind) = verify(work.path(), &key).await;
    assert!(!valid);
    assert_eq!(
        (index, kind.as_deref()),
        (Some(target as u64), Some("modified"))
    );

    // Delete one.
    let mut deleted = events.clone();
    deleted.remove(4);
    case(deleted, checkpoints.clone());
    let (valid, index, _) = verify(work.path(), &key).await;
    assert!(!valid);
    assert_eq!(index, Some(4));

    // Reorder two.
    let mut reordered = events.clone();
    reordered.swap(2, 5);
    case(reordered, checkpoints.clone());
    let (valid, index, _) = verify(work.path(), &key).await;
    assert!(!valid);
    assert_eq!(index, Some(2));

    // Truncate the tail.
    case(events[..n - 2].to_vec(), checkpoints.clone());
    let (valid, index, kind) = verify(work.path(), &key).await;
    assert!(!valid);
    assert_eq!(
        (index, kind.as_deref()),
        (Some(n as u64 - 2), Some("truncated"))
    );

    // Re-sign the checkpoint with another key (a forged note).
    let forged_note = checkpoints
        .last()
        .unwrap()
        .rsplit_once("\u{2014} ")
        .map(|(body, _)| format!("{body}\u{2014} other {}\n", "A".repeat(92)))
        .unwrap();
    let mut forged = checkpoints.clone();
    *forged.last_mut().unwrap() = forged_note;
    case(events.clone(), forged);
    let (valid, _, kind) = verify(work.path(), &key).await;
    assert!(!valid);
    assert_eq!(kind.as_deref(), Some("bad_signature"));

    // The untouched export still verifies.
    assert_eq!(verify(good.path(), &key).await, (true, None, None));
    vault.stop().await;
}

#[tokio::test]
async fn a_raw_edit_of_the_audit_column_family_is_caught() {
    if vault_tests::skip_on_postgres("edits the audit column family of RocksDB") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    some_traffic(&vault, 3).await;
    let before = tempfile::tempdir().unwrap();
    let key = export(&vault, before.path()).await;
    let (_, checkpoints) = read_export(before.path());
    vault.stop().await;

    // Someone with the data folder rewrites a data event in place.
    let db = crate::tamper::open_raw(dir.path());
    let cf = db.cf_handle("audit").unwrap();
    let stored: Vec<Vec<u8>> = db
        .prefix_iterator_cf(cf, b"e")
        .map(|r| r.unwrap())
        .take_while(|(k, _)| k.first() == Some(&b'e'))
        .map(|(_, v)| v.to_vec())
        .collect();
    let target = stored
        .iter()
        .position(|e| String::from_utf8_lossy(e).contains("dev-root"))
        .unwrap();
    let mut k = vec![b'e'];
    k.extend_from_slice(&(target as u64).to_be_bytes());
    let text = String::from_utf8(stored[target].clone()).unwrap();
    db.put_cf(cf, &k, text.replace("dev-root", "dev-rooT"))
        .unwrap();
    let raw: Vec<Vec<u8>> = db
        .prefix_iterator_cf(cf, b"e")
        .map(|r| r.unwrap())
        .take_while(|(k, _)| k.first() == Some(&b'e'))
        .map(|(_, v)| v.to_vec())
        .collect();
    drop(db);
    // The auditor, with the checkpoint taken earlier, catches it.
    let after = tempfile::tempdir().unwrap();
    write_export(after.path(), &raw, &checkpoints);
    let (valid, index, kind) = verify(after.path(), &key).await;
    assert!(!valid);
    assert_eq!(
        (index, kind.as_deref()),
        (Some(target as u64), Some("modified"))
    );
    // And the vault refuses to append to a damaged log.
    assert!(TestVault::start(dir.path(), "eu").await.is_err());
}

#[tokio::test]
async fn every_custody_admin_and_data_rpc_leaves_exactly_one_event() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    let size = || vault.engine().audit().size();
    let mut before = size();
    let mut step = |what: &str, now: u64| {
        assert_eq!(now - before, 1, "{what}: events");
        before = now;
    };
    client.collections().await.unwrap();
    step("list collections", size());
    client.collection("users").await.unwrap();
    step("get collection", size());
    client
        .create_collection(&crate::all_types("things"))
        .await
        .unwrap();
    step("create collection", size());
    assert!(client
        .create_collection(&crate::all_types("things"))
        .await
        .is_err());
    step("create collection refused", size());
    client.put(&user("u1", "s1")).await.unwrap();
    step("put", size());
    client
        .put_many(&[user("u2", "s2"), user("u3", "s3")])
        .await
        .unwrap();
    step("batch put", size());
    client.get("users", "u1").await.unwrap();
    step("get", size());
    client.get_many("users", &["u1", "u2"], &[]).await.unwrap();
    step("batch get", size());
    client.delete("users", "u3").await.unwrap();
    step("delete", size());
    let custodian = vault.custodian().await;
    custodian.status().await.unwrap();
    step("status", size());
    custodian.root_keys().await.unwrap();
    step("list root keys", size());
    custodian.rewrap_status().await.unwrap();
    step("rewrap status", size());
    custodian.rotate_subject_key("s1").await.unwrap();
    step("rotate subject key", size());
    assert!(
        custodian.retire_root_key(1).await.is_err(),
        "the current version"
    );
    step("retire refused after authorisation", size());
    client.erase_subject("s2").await.unwrap();
    step("erase subject", size());
    assert!(
        client.reload_policy().await.is_err(),
        "no policy file in dev mode"
    );
    step("reload policy refused", size());
    client
        .check_policy("dev-root", Some("testing"), None)
        .await
        .unwrap();
    step("check policy", size());
    drop(client);
    vault.stop().await;
}

/// The newest audit event of `vault`.
fn last_event(vault: &TestVault) -> serde_json::Value {
    let log = vault.vault.audit_log();
    let events = log.events(log.size() - 1, 1).unwrap();
    serde_json::from_slice(&events[0]).unwrap()
}

/// Calls `path` with `msg` (encoded as given) over a plain gRPC client.
async fn call_raw(
    vault: &TestVault,
    path: &'static str,
    msg: pb::AuditEventsRequest,
) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(vault.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec =
        tonic_prost::ProstCodec::<pb::AuditEventsRequest, pb::AuditEventsResponse>::default();
    grpc.unary(
        authed(msg),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .map(drop)
}

#[tokio::test]
async fn requests_no_handler_records_are_recorded_by_the_server() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let size = || vault.vault.audit_log().size();
    let mut before = size();
    let mut one_more = |what: &str| {
        let now = size();
        assert_eq!(now - before, 1, "{what}: events");
        before = now;
        last_event(&vault)
    };

    // A health check: no credentials, still one event, named by its id.
    let channel = tonic::transport::Endpoint::from_shared(vault.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    let ev = one_more("health check");
    assert_eq!(ev["operation"], "grpc.health.v1.Health/Check");
    assert_eq!(
        (&ev["principal"], &ev["decision"]),
        (&"unauthenticated".into(), &"allowed".into())
    );
    let id = response
        .metadata()
        .get(vault_server::service::REQUEST_ID_HEADER)
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(ev["request_id"], id);

    // Refused by the authentication layer, before any handler.
    let stranger = vault.client_with("not-a-token").await;
    assert!(stranger.collections().await.is_err());
    let ev = one_more("bad token");
    assert_eq!(ev["operation"], "vault.v1.VaultService/ListCollections");
    assert_eq!(
        (&ev["principal"], &ev["decision"], &ev["reason"]),
        (
            &"unauthenticated".into(),
            &"denied".into(),
            &"unauthenticated".into()
        )
    );

    // A message that does not decode: authenticated, refused by the codec.
    let bad = pb::AuditEventsRequest { from: 5, limit: 1 };
    assert!(call_raw(&vault, "/vault.v1.VaultService/GetRecord", bad)
        .await
        .is_err());
    let ev = one_more("undecodable message");
    assert_eq!(ev["operation"], "vault.v1.VaultService/GetRecord");
    assert_eq!(
        (&ev["principal"], &ev["decision"]),
        (&"dev-root".into(), &"failed".into())
    );

    // Unknown methods: the path is the client's text, never logged.
    for path in [
        "/vault.v1.VaultService/NoSuchMethod",
        "/jane.doe@example.eu/Get",
    ] {
        let r = call_raw(&vault, path, pb::AuditEventsRequest::default()).await;
        assert_eq!(r.unwrap_err().code(), tonic::Code::Unimplemented);
        let ev = one_more(path);
        assert_eq!(ev["operation"], "<unknown method>");
        assert_eq!(ev["reason"], "unimplemented");
        assert!(!ev.to_string().contains("jane"));
    }

    // The auditor's own reads are events too.
    let client = vault.client().await;
    client.audit_events(0, 5).await.unwrap();
    let ev = one_more("audit events");
    assert_eq!(ev["operation"], "vault.v1.AuditService/Events");
    drop(client);
    vault.stop().await;
}

/// Runs `vaultctl --json audit ledger SUBJECT [--public-key KEY]`.
async fn ledger_by_ctl(
    vault: &TestVault,
    subject: &str,
    key: Option<&Path>,
) -> (bool, serde_json::Value) {
    let mut cmd = Command::new(vaultctl_binary());
    cmd.args(["--json", "audit", "ledger", subject])
        .env("VAULT_ADDR", vault.url())
        .env("VAULT_TOKEN", TOKEN)
        .env("VAULT_PURPOSE", vault_tests::PURPOSE);
    if let Some(key) = key {
        cmd.arg("--public-key").arg(key);
    }
    let out = cmd.output().await.unwrap();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), json)
}

#[tokio::test]
async fn a_subjects_access_ledger_lists_its_events_with_proofs() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    client.put(&user("u1", "alice")).await.unwrap();
    client.put(&user("u2", "bob")).await.unwrap();
    client.get("users", "u1").await.unwrap();
    client.get("users", "u2").await.unwrap();
    client.get_many("users", &["u1", "u2"], &[]).await.unwrap();
    vault
        .custodian()
        .await
        .rotate_subject_key("alice")
        .await
        .unwrap();
    let key_dir = tempfile::tempdir().unwrap();
    let key = key_dir.path().join("vault.vkey");
    let (verifier_key, _) = client.audit_public_key().await.unwrap();
    std::fs::write(&key, format!("{verifier_key}\n")).unwrap();

    // Through the client, a page at a time: each verifies on its own.
    let verifier: vault_client::audit::VerifierKey = verifier_key.parse().unwrap();
    let first = client.access_ledger("alice", 0, 2, 0).await.unwrap();
    assert_eq!(first.entries.len(), 2);
    first.verify(&verifier).unwrap();
    let next = first.next_index.unwrap();
    let size = vault_client::audit::Checkpoint::claimed_size(first.checkpoint.as_bytes()).unwrap();
    let rest = client.access_ledger("alice", next, 0, size).await.unwrap();
    assert_eq!(rest.checkpoint, first.checkpoint, "one tree for every page");
    rest.verify(&verifier).unwrap();
    assert_eq!(rest.next_index, None);
    let ops: Vec<String> = first
        .entries
        .iter()
        .chain(&rest.entries)
        .map(|e| {
            let ev: serde_json::Value = serde_json::from_slice(&e.event).unwrap();
            ev["operation"].as_str().unwrap().to_owned()
        })
        .collect();
    // Alice's put, get, batch get and rotation (the ledger requests came
    // after the tree they are proved in).
    assert_eq!(ops, ["write", "read", "read", "rotate_subject_key"]);
    assert_eq!(first.verifier_key, verifier_key);

    // vaultctl checks every proof with the pinned key.
    let (ok, json) = ledger_by_ctl(&vault, "alice", Some(&key)).await;
    assert!(ok, "{json}");
    assert_eq!(json["verified"], true);
    assert_eq!(json["key_pinned"], true);
    let events = json["events"].as_array().unwrap();
    assert_eq!(events.len(), 6, "{json}");
    assert!(events.iter().all(|e| e["subjects"]
        .as_array()
        .unwrap()
        .contains(&json["subject_pseudonym"])));
    assert!(
        !json.to_string().contains("alice"),
        "no subject id in the output"
    );

    // After erasure the ledger still answers, erasure included.
    client.erase_subject("alice").await.unwrap();
    let (ok, json) = ledger_by_ctl(&vault, "alice", Some(&key)).await;
    assert!(ok, "{json}");
    let events = json["events"].as_array().unwrap();
    // The six before, the first vaultctl ledger request, the erasure.
    assert_eq!(events.len(), 8, "{json}");
    assert_eq!(events[6]["operation"], "access_ledger");
    assert_eq!(events[7]["operation"], "erase_subject");

    // Bob's ledger holds only his events (here with the vault's own key,
    // as a DPO without the `audit` operation gets it); a stranger's key is
    // refused.
    let (ok, json) = ledger_by_ctl(&vault, "bob", None).await;
    assert!(ok, "{json}");
    assert_eq!(json["key_pinned"], false);
    assert_eq!(json["events"].as_array().unwrap().len(), 3, "{json}");
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestVault::start(other_dir.path(), "eu").await.unwrap();
    let (other_key, _) = other.client().await.audit_public_key().await.unwrap();
    other.stop().await;
    std::fs::write(&key, format!("{other_key}\n")).unwrap();
    let (ok, json) = ledger_by_ctl(&vault, "bob", Some(&key)).await;
    assert!(!ok);
    assert_eq!(json["verified"], false);
    assert!(
        json["reason"].as_str().unwrap().contains("checkpoint"),
        "{json}"
    );
    drop(client);
    vault.stop().await;
}

#[tokio::test]
async fn following_the_log_streams_new_events_and_ends_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    let from = vault.vault.audit_log().size();
    let mut follow = client.audit_follow(from).await.unwrap();
    // The follow request is itself an event, streamed first.
    let first = follow.next().await.unwrap().unwrap();
    let ev: serde_json::Value = serde_json::from_slice(&first.events[0]).unwrap();
    assert_eq!(ev["operation"], "vault.v1.AuditService/Follow");
    // A write appears as it is appended, without asking again.
    client.put(&user("u1", "s1")).await.unwrap();
    let page = follow.next().await.unwrap().unwrap();
    let ev: serde_json::Value = serde_json::from_slice(&page.events[0]).unwrap();
    assert_eq!(
        (ev["operation"].as_str(), ev["index"].as_u64()),
        (Some("write"), Some(from + 1))
    );
    // Stopping the server ends the stream (it does not hold up the drain).
    drop(client);
    let stopping = tokio::spawn(vault.stop());
    assert!(matches!(follow.next().await, Ok(None) | Err(_)));
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_request_whose_deadline_passes_still_leaves_its_event() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    let mut follow = client
        .audit_follow(vault.vault.audit_log().size())
        .await
        .unwrap();
    follow.next().await.unwrap().unwrap(); // the follow request's own event
                                           // A deadline of 1 ns: tonic's server gives up on the request outside
                                           // the audit layer; the request still runs to its end and is recorded.
    let channel = tonic::transport::Endpoint::from_shared(vault.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(std::time::Duration::from_nanos(1));
    let _ = HealthClient::new(channel).check(request).await;
    let page = tokio::time::timeout(std::time::Duration::from_secs(60), follow.next())
        .await
        .expect("no event for the request whose deadline passed")
        .unwrap()
        .unwrap();
    let ev: serde_json::Value = serde_json::from_slice(&page.events[0]).unwrap();
    assert_eq!(ev["operation"], "grpc.health.v1.Health/Check");
    drop(follow);
    drop(client);
    // The harness checks that no request was left without its event.
    vault.stop().await;
}

/// The encoded size of an audit page as the vault sends it.
fn encoded_page_len(events: &[Vec<u8>], tree_size: u64) -> usize {
    use prost::Message;
    pb::AuditEventsResponse {
        events: events.to_vec(),
        tree_size,
    }
    .encoded_len()
}

/// The `index` of each event, which must run on from `from` without a gap.
fn check_dense(events: &[Vec<u8>], from: u64) {
    for (i, e) in events.iter().enumerate() {
        let ev: serde_json::Value = serde_json::from_slice(e).unwrap();
        assert_eq!(ev["index"].as_u64(), Some(from + i as u64), "event {i}");
    }
}

#[tokio::test]
async fn pages_of_large_events_stay_under_4_mib_and_every_event_comes() {
    use vault_server::audit::MAX_PAGE_BYTES;
    // Reads of 500 records (the most in a batch) of 500 subjects: each event
    // names 1000 pseudonyms (~67 KB); 150 of them (~10 MB) pass the 8 MiB a
    // response may hold, so 1000 events a page cannot work.
    const READS: u64 = 150;
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    client
        .create_collection(&crate::all_types("tiny"))
        .await
        .unwrap();
    let records: Vec<vault_client::Record> = (0..500)
        .map(|i| vault_client::Record::new("tiny", i.to_string(), i.to_string()).with("b", true))
        .collect();
    client.put_many(&records).await.unwrap();
    let ids: Vec<String> = (0..500).map(|i: u32| i.to_string()).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let from = vault.vault.audit_log().size();
    for _ in 0..READS {
        // Projected on a field the records lack: found, none decrypted.
        let got = client.get_many("tiny", &ids, &["i"]).await.unwrap();
        assert_eq!(got.records.len(), 500);
    }
    // (The vault's own work may have added an event or two.)
    let end = vault.vault.audit_log().size();
    let n = end - from;
    let stored = vault.vault.audit_log().events(from, n as usize).unwrap();
    assert_eq!(stored.len() as u64, n);
    let large = stored.iter().filter(|e| e.len() > 60_000).count();
    assert_eq!(large as u64, READS);
    let total: usize = stored.iter().map(Vec::len).sum();
    assert!(total > 8 * 1024 * 1024, "{total}");

    // Events, 1000 asked each time, with a client that accepts no message
    // over 4 MiB: pages stop at the byte cap (not one event short of it),
    // and paging on from what came returns every event.
    let mut raw = AuditServiceClient::connect(vault.url())
        .await
        .unwrap()
        .max_decoding_message_size(MAX_PAGE_BYTES);
    let mut events: Vec<Vec<u8>> = Vec::new();
    let mut pages = 0;
    while (events.len() as u64) < n {
        let page = raw
            .events(authed(pb::AuditEventsRequest {
                from: from + events.len() as u64,
                limit: 1000,
            }))
            .await
            .unwrap()
            .into_inner();
        let bytes = encoded_page_len(&page.events, page.tree_size);
        assert!(bytes <= MAX_PAGE_BYTES, "a page of {bytes} bytes");
        assert!(!page.events.is_empty());
        let after = from + (events.len() + page.events.len()) as u64;
        if after < end {
            let next = &stored[events.len() + page.events.len()];
            // (The vault keeps 11 bytes for the tree size; an event costs
            // 4 more than its length.)
            assert!(
                bytes + next.len() + 15 > MAX_PAGE_BYTES,
                "page stopped early"
            );
        }
        events.extend(page.events);
        pages += 1;
    }
    // (The last page may hold the events of these requests too.)
    assert_eq!(events[..n as usize], stored[..]);
    assert!(pages >= 3, "{pages} pages");
    check_dense(&events, from);

    // The client's follow stream: the backlog in messages of at most 4 MiB.
    let mut follow = client.audit_follow(from).await.unwrap();
    let mut followed: Vec<Vec<u8>> = Vec::new();
    let mut messages = 0;
    while (followed.len() as u64) < n {
        let page = follow.next().await.unwrap().unwrap();
        let bytes = encoded_page_len(&page.events, page.tree_size);
        assert!(bytes <= MAX_PAGE_BYTES, "a message of {bytes} bytes");
        followed.extend(page.events);
        messages += 1;
    }
    assert_eq!(followed[..n as usize], stored[..]);
    assert!(messages >= 3, "{messages} messages");
    drop(follow);

    // vaultctl: tail (to the end of the log), tail --follow, export.
    let ctl = || {
        let mut cmd = Command::new(vaultctl_binary());
        cmd.env("VAULT_ADDR", vault.url())
            .env("VAULT_TOKEN", TOKEN)
            .kill_on_drop(true);
        cmd
    };
    let out = ctl()
        .args(["audit", "tail", "--from", &from.to_string()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&[u8]> = out.stdout.split(|&b| b == b'\n').collect();
    assert!(lines.len() as u64 > n, "{} lines", lines.len());
    check_dense(
        &lines[..n as usize]
            .iter()
            .map(|l| l.to_vec())
            .collect::<Vec<_>>(),
        from,
    );

    let mut child = ctl()
        .args(["audit", "tail", "--follow", "--from", &from.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let mut tailed = Vec::new();
    while (tailed.len() as u64) < n {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("tail --follow ended before the last event");
        tailed.push(line.into_bytes());
    }
    check_dense(&tailed, from);
    child.kill().await.unwrap();

    let export_dir = tempfile::tempdir().unwrap();
    let out = ctl()
        .args(["--json", "audit", "export"])
        .arg(export_dir.path().join("export"))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (exported, _) = read_export(&export_dir.path().join("export"));
    assert!(exported.len() as u64 >= end);
    assert_eq!(exported[from as usize..end as usize], stored[..]);
    check_dense(&exported, 0);
    let key_file = export_dir.path().join("vault.vkey");
    let (verifier_key, _) = client.audit_public_key().await.unwrap();
    std::fs::write(&key_file, format!("{verifier_key}\n")).unwrap();
    assert_eq!(
        verify(&export_dir.path().join("export"), &key_file).await,
        (true, None, None)
    );
    drop(client);
    vault.stop().await;
}

/// Events say what was asked: a batch across collections names every
/// collection, and reads and deletes that are refused or find nothing
/// still carry the pseudonyms of the ids asked for, the same pseudonyms
/// as the writes of those ids (id probing shows to the auditor).
#[tokio::test]
async fn events_name_every_collection_and_every_id_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    client
        .create_collection(&crate::all_types("things"))
        .await
        .unwrap();
    let thing = vault_client::Record::new("things", "t1", "alice").with("s", "x");
    let from = client.audit_events(0, 1).await.unwrap().tree_size;
    client
        .put_many(&[user("u1", "alice"), thing, user("u2", "bob")])
        .await
        .unwrap();
    // Not found, refused (the custodian reads no data), and a delete
    // refused for want of a purpose.
    let got = client
        .get_many("users", &["u1", "ghost"], &[])
        .await
        .unwrap();
    assert_eq!(got.missing_ids, ["ghost"]);
    assert!(client.get("users", "ghost").await.is_err());
    assert!(vault
        .custodian()
        .await
        .get_many("users", &["u2", "ghost"], &[])
        .await
        .is_err());
    let no_purpose = vault
        .client_builder()
        .token(vault_tests::TOKEN)
        .connect()
        .await
        .unwrap();
    assert!(no_purpose.delete("users", "u1").await.is_err());

    let events: Vec<serde_json::Value> = client
        .audit_events(from, 100)
        .await
        .unwrap()
        .events
        .iter()
        .map(|e| serde_json::from_slice(e).unwrap())
        .collect();
    let of = |op: &str| -> Vec<&serde_json::Value> {
        events.iter().filter(|e| e["operation"] == op).collect()
    };
    let records = |e: &serde_json::Value| -> Vec<String> {
        e["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    };
    let write = of("write")[0];
    assert_eq!(write["collection"], "users,things", "{write}");
    let written = records(write);
    assert_eq!(written.len(), 3, "{write}");
    assert_eq!(write["subjects"].as_array().unwrap().len(), 2, "{write}");
    let (u1, u2) = (&written[0], &written[2]);

    let reads = of("read");
    assert_eq!(reads.len(), 3, "{reads:?}");
    let found_and_ghost = records(reads[0]);
    assert_eq!(found_and_ghost[0], *u1);
    let ghost = &found_and_ghost[1];
    assert!(!written.contains(ghost));
    assert_eq!(records(reads[1]), std::slice::from_ref(ghost), "not found");
    assert_ne!(reads[2]["decision"], "allowed", "{}", reads[2]);
    assert_eq!(
        records(reads[2]),
        [u2.clone(), ghost.clone()],
        "refused: {}",
        reads[2]
    );
    let delete = of("delete")[0];
    assert_ne!(delete["decision"], "allowed", "{delete}");
    assert_eq!(records(delete), std::slice::from_ref(u1), "refused");
    drop((client, no_purpose));
    vault.stop().await;
}
