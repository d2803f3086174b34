//! The access policy through real mutual-TLS sockets: an authorisation
//! matrix (principals × purposes × fields × operations, each cell an exact
//! outcome), redacted fields never decrypted, reload without reconnecting,
//! and a broken policy file refused while the old policy stays.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use vault_client::{Error, Record, Value, VaultClient};
use vault_server::policy::{Policy, PolicyHandle};
use vault_server::service::Authenticator;
use vault_server::vault::OpenOptions;
use vault_tests::{Pki, TestVault, TlsFixture};

use crate::user;

const LOADER: &str = "spiffe://eu.test/loader";
const BILLING: &str = "spiffe://eu.test/billing";
const SUPPORT: &str = "spiffe://eu.test/support";
const ANALYTICS: &str = "spiffe://eu.test/analytics";
const ADMIN: &str = "spiffe://eu.test/policy-admin";
const STRANGER: &str = "spiffe://eu.test/stranger";

const POLICY: &str = r#"
[principals]
"spiffe://eu.test/loader" = ["loader"]
"spiffe://eu.test/billing" = ["billing"]
"spiffe://eu.test/support" = ["support"]
"spiffe://eu.test/analytics" = ["analytics"]
"spiffe://eu.test/policy-admin" = ["policy-admin"]

[[roles.loader.rules]]
collections = ["users"]
operations = ["write", "read", "delete"]
purposes = ["onboarding"]

[[roles.billing.rules]]
collections = ["users"]
fields = ["name", "country"]
operations = ["read"]
purposes = ["billing"]

[[roles.support.rules]]
collections = ["users"]
categories = ["contact"]
operations = ["read"]
purposes = ["support-ticket"]
redaction = "masked"

[[roles.support.rules]]
collections = ["users"]
fields = ["name"]
operations = ["read"]
purposes = ["support-ticket"]

[[roles.analytics.rules]]
collections = ["users"]
fields = ["country"]
operations = ["read"]
purposes = ["statistics"]

[[roles.analytics.rules]]
collections = ["users"]
fields = ["email", "birth_date"]
operations = ["read"]
purposes = ["statistics"]
redaction = "redacted"

[[roles.policy-admin.rules]]
operations = ["admin", "audit"]
"#;

/// One cell of a read: what the caller gets for a field.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Plain,
    Masked(&'static str),
    Redacted,
}

struct Setup {
    vault: TestVault,
    pki: Pki,
    policy_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let policy_file = dir.path().join("policy.toml");
    std::fs::write(&policy_file, POLICY).unwrap();
    let mut opts = OpenOptions::dev(&dir.path().join("data"), "eu".parse().unwrap());
    opts.engine.policy = Arc::new(PolicyHandle::new(
        Policy::load(&policy_file).unwrap(),
        Some(policy_file.clone()),
    ));
    let pki = Pki::new("policy test CA");
    // Certificate principals are configured (here without roles: the policy
    // file gives them theirs). The stranger is not configured at all.
    let mut auth = Authenticator::new();
    for p in [LOADER, BILLING, SUPPORT, ANALYTICS, ADMIN] {
        auth.add_certificate_principal(p, Vec::new());
    }
    let vault = TestVault::start_tls_with(opts, TlsFixture::mutual(&pki, auth))
        .await
        .unwrap();
    Setup {
        vault,
        pki,
        policy_file,
        _dir: dir,
    }
}

async fn client(s: &Setup, principal: &str, purpose: Option<&str>) -> VaultClient {
    let id = s.pki.client_uri(principal, None);
    let mut b = s
        .vault
        .client_builder()
        .client_identity_pem(id.cert_pem, id.key_pem);
    if let Some(p) = purpose {
        b = b.purpose(p);
    }
    b.connect().await.unwrap()
}

fn full_user() -> Record {
    user("u1", "s1")
}

/// Checks a read against the expected view of every field.
fn assert_view(got: &Record, expected: &[(&str, Seen)], who: &str) {
    let original = full_user();
    for (field, seen) in expected {
        match seen {
            Seen::Plain => {
                assert_eq!(
                    got.fields.get(*field),
                    original.fields.get(*field),
                    "{who}: {field}"
                );
                assert!(
                    !got.redacted.contains(*field) && !got.masked.contains(*field),
                    "{who}: {field}"
                );
            }
            Seen::Masked(v) => {
                assert_eq!(
                    got.fields.get(*field),
                    Some(&Value::String((*v).into())),
                    "{who}: {field}"
                );
                assert!(got.masked.contains(*field), "{who}: {field}");
            }
            Seen::Redacted => {
                assert!(!got.fields.contains_key(*field), "{who}: {field} leaked");
                assert!(got.redacted.contains(*field), "{who}: {field} not marked");
            }
        }
    }
}

#[tokio::test]
async fn authorisation_matrix_through_mutual_tls() {
    let s = setup().await;
    let loader = client(&s, LOADER, Some("onboarding")).await;
    loader.put(&full_user()).await.unwrap();
    assert_eq!(loader.get("users", "u1").await.unwrap(), full_user());

    use Seen::*;
    // (principal, purpose, read outcome: Ok(fields) or Err(kind), decrypts)
    type Cell = (
        &'static str,
        Option<&'static str>,
        Result<Vec<(&'static str, Seen)>, &'static str>,
        u64,
    );
    let all_plain = vec![
        ("email", Plain),
        ("name", Plain),
        ("phone", Plain),
        ("birth_date", Plain),
        ("country", Plain),
    ];
    let cells: Vec<Cell> = vec![
        (LOADER, Some("onboarding"), Ok(all_plain), 5),
        (LOADER, Some("billing"), Err("denied"), 0),
        (LOADER, None, Err("purpose"), 0),
        (
            BILLING,
            Some("billing"),
            Ok(vec![
                ("name", Plain),
                ("country", Plain),
                ("email", Redacted),
                ("phone", Redacted),
                ("birth_date", Redacted),
            ]),
            2,
        ),
        (BILLING, Some("support-ticket"), Err("denied"), 0),
        (
            SUPPORT,
            Some("support-ticket"),
            Ok(vec![
                ("email", Masked("u************")),
                ("phone", Masked("********5678")),
                ("name", Plain),
                ("country", Redacted),
                ("birth_date", Redacted),
            ]),
            3,
        ),
        (SUPPORT, Some("billing"), Err("denied"), 0),
        (SUPPORT, None, Err("purpose"), 0),
        (
            ANALYTICS,
            Some("statistics"),
            Ok(vec![
                ("country", Plain),
                ("email", Redacted),
                ("birth_date", Redacted),
                ("name", Redacted),
                ("phone", Redacted),
            ]),
            1,
        ),
        (ANALYTICS, Some("onboarding"), Err("denied"), 0),
        (ADMIN, Some("onboarding"), Err("denied"), 0),
        (STRANGER, Some("onboarding"), Err("denied"), 0),
    ];
    for (principal, purpose, expected, decrypts) in cells {
        let who = format!("{principal} for {purpose:?}");
        let c = client(&s, principal, purpose).await;
        let before = s.vault.engine().stats().fields_decrypted;
        let got = c.get("users", "u1").await;
        let batch = c.get_many("users", &["u1"], &[]).await;
        assert_eq!(
            s.vault.engine().stats().fields_decrypted - before,
            decrypts * u64::from(got.is_ok()) * 2,
            "{who}: fields decrypted"
        );
        match expected {
            Ok(view) => {
                let got = got.unwrap_or_else(|e| panic!("{who}: {e:?}"));
                assert_view(&got, &view, &who);
                assert_eq!(batch.unwrap().records, vec![got], "{who}: batch read");
            }
            Err(kind) => {
                for r in [got.map(|_| ()), batch.map(|_| ())] {
                    match (kind, r) {
                        ("denied", Err(Error::PermissionDenied(_))) => {}
                        ("purpose", Err(Error::InvalidInput(m))) if m.contains("purpose") => {}
                        (_, other) => panic!("{who}: expected {kind}, got {other:?}"),
                    }
                }
            }
        }
        // Writes and deletes: only the loader, for its purpose.
        let write = c.put(&user("w1", "s9")).await;
        let delete = c.delete("users", "nope").await;
        if principal == LOADER && purpose == Some("onboarding") {
            write.unwrap();
            assert!(!delete.unwrap());
        } else {
            for r in [write.map(|_| ()), delete.map(|_| ())] {
                assert!(
                    matches!(
                        r,
                        Err(Error::PermissionDenied(_)) | Err(Error::InvalidInput(_))
                    ),
                    "{who}: {r:?}"
                );
            }
        }
        // Custody is nobody's here.
        assert!(
            matches!(c.rotate_root_key().await, Err(Error::PermissionDenied(_))),
            "{who}"
        );
    }

    // What a policy showed cannot be written back as if it were the record.
    let support = client(&s, SUPPORT, Some("support-ticket")).await;
    let seen = support.get("users", "u1").await.unwrap();
    let refused = loader.put(&seen).await;
    assert!(
        matches!(&refused, Err(Error::InvalidInput(m)) if m.contains("masked or redacted")),
        "{refused:?}"
    );

    // A projection of only redacted fields decrypts nothing.
    let billing = client(&s, BILLING, Some("billing")).await;
    let before = s.vault.engine().stats().fields_decrypted;
    let got = billing
        .get_fields("users", "u1", &["email", "phone"])
        .await
        .unwrap();
    assert_eq!(s.vault.engine().stats().fields_decrypted, before);
    assert!(got.fields.is_empty());
    assert_eq!(
        got.redacted,
        BTreeSet::from(["email".to_owned(), "phone".to_owned()])
    );

    // The auditor's view agrees with what the matrix saw.
    let admin = client(&s, ADMIN, None).await;
    let check = admin
        .check_policy(SUPPORT, Some("support-ticket"), Some("users"))
        .await
        .unwrap();
    assert_eq!(check.roles, vec!["support".to_owned()]);
    let read = check
        .operations
        .iter()
        .find(|o| o.operation == "read")
        .unwrap();
    let access: Vec<(String, String)> = read
        .fields
        .iter()
        .map(|f| (f.field.clone(), f.access.clone()))
        .collect();
    assert!(
        access.contains(&("email".into(), "masked".into())),
        "{access:?}"
    );
    assert!(
        access.contains(&("name".into(), "plain".into())),
        "{access:?}"
    );
    assert!(
        access.contains(&("country".into(), "redacted".into())),
        "{access:?}"
    );
    s.vault.stop().await;
}

#[tokio::test]
async fn reload_changes_a_running_clients_access_and_a_broken_file_changes_nothing() {
    let s = setup().await;
    client(&s, LOADER, Some("onboarding"))
        .await
        .put(&full_user())
        .await
        .unwrap();
    let analytics = client(&s, ANALYTICS, Some("statistics")).await;
    let admin = client(&s, ADMIN, None).await;
    assert!(analytics
        .get("users", "u1")
        .await
        .unwrap()
        .redacted
        .contains("name"));

    // Grant analytics the name, reload by RPC: the same client (the same
    // connection) sees it at once.
    write_policy(
        &s.policy_file,
        &POLICY.replace(r#"fields = ["country"]"#, r#"fields = ["country", "name"]"#),
    );
    admin.reload_policy().await.unwrap();
    let got = analytics.get("users", "u1").await.unwrap();
    assert_eq!(got.fields.get("name"), full_user().fields.get("name"));

    // A broken file is refused with its line; the policy in force stays.
    write_policy(
        &s.policy_file,
        "[roles.x]\n[[roles.x.rules]]\noperations = [\"fly\"]\n",
    );
    let err = admin.reload_policy().await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("line 3")),
        "{err:?}"
    );
    let got = analytics.get("users", "u1").await.unwrap();
    assert!(
        got.fields.contains_key("name"),
        "the reloaded policy is still in force"
    );

    // Take analytics out of the policy: its configured certificate
    // principal now holds no roles, and is denied on the same connection.
    write_policy(
        &s.policy_file,
        &POLICY.replace("\"spiffe://eu.test/analytics\" = [\"analytics\"]\n", ""),
    );
    admin.reload_policy().await.unwrap();
    assert!(matches!(
        analytics.get("users", "u1").await,
        Err(Error::PermissionDenied(_))
    ));
    // Only an admin may reload.
    assert!(matches!(
        analytics.reload_policy().await,
        Err(Error::PermissionDenied(_))
    ));
    s.vault.stop().await;
}

fn write_policy(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn vaultctl_shows_redaction_and_the_auditors_view() {
    let s = setup().await;
    client(&s, LOADER, Some("onboarding"))
        .await
        .put(&full_user())
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let ca = files.path().join("ca.pem");
    std::fs::write(&ca, s.pki.ca_pem()).unwrap();
    let ca = ca.to_str().unwrap().to_owned();
    let url = s.vault.url();
    let as_ = |principal: &str, name: &str| {
        let (cert, key) = s.pki.client_uri(principal, None).write(files.path(), name);
        (
            cert.to_str().unwrap().to_owned(),
            key.to_str().unwrap().to_owned(),
        )
    };
    let (support_cert, support_key) = as_(SUPPORT, "support");
    let (admin_cert, admin_key) = as_(ADMIN, "admin");
    let run = |cert: String, key: String, args: Vec<&'static str>| {
        let (url, ca) = (url.clone(), ca.clone());
        async move {
            let mut all = vec!["--addr", &url, "--ca", &ca, "--cert", &cert, "--key", &key];
            all.extend(args);
            crate::tls::vaultctl_env(&all, &[]).await
        }
    };

    let out = run(
        support_cert.clone(),
        support_key.clone(),
        vec!["--purpose", "support-ticket", "get", "users", "u1"],
    )
    .await;
    let text = out.ok();
    assert!(text.contains("email: u************ (masked)"), "{text}");
    assert!(text.contains("country: (redacted)"), "{text}");
    assert!(text.contains("name: Ada Lovelace\n"), "{text}");
    let out = run(
        support_cert,
        support_key,
        vec!["--purpose", "marketing", "get", "users", "u1"],
    )
    .await;
    assert!(out.error(1).contains("permission denied"), "{out:?}");

    let out = run(
        admin_cert.clone(),
        admin_key.clone(),
        vec![
            "policy",
            "check",
            "--principal",
            SUPPORT,
            "--purpose",
            "support-ticket",
            "--collection",
            "users",
        ],
    )
    .await;
    let text = out.ok();
    assert!(text.contains("roles: support"), "{text}");
    assert!(text.contains("read:"), "{text}");
    for (field, access) in [
        ("email", "masked"),
        ("name", "plain"),
        ("country", "redacted"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [field, access]),
            "{field} {access}: {text}"
        );
    }
    let out = run(admin_cert, admin_key, vec!["--json", "policy", "reload"]).await;
    let json: serde_json::Value = serde_json::from_str(out.ok().trim()).unwrap();
    assert_eq!(json["source"], s.policy_file.display().to_string());
    s.vault.stop().await;
}
