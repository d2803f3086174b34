//! TLS and mutual TLS on the gRPC port, with certificates made by the test
//! (`vault_tests::Pki`): the principal comes from the client certificate
//! (URI SAN, else CN); connections without a valid client certificate fail
//! their handshake and get no data; tokens are checked for expiry,
//! revocation and their principal; `vaultctl` speaks mutual TLS.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::process::Command;
use vault_client::{ClientBuilder, Error, VaultClient};
use vault_server::dev;
use vault_server::policy::{Principal, Role};
use vault_server::service::{hash_token, Authenticator, TokenGrant};
use vault_tests::{vaultctl_binary, CertAndKey, Pki, TestVault, TlsFixture, TOKEN};

use crate::user;
use crate::vaultctl::Run;

const BILLING: &str = "spiffe://eu.example/billing-service";
const SUPPORT: &str = "support-desk";
const PURPOSE: &str = "tls-test";

/// The certificate principals of these tests and a few tokens: the dev
/// token, a live and an expired and a revoked token for BILLING.
fn auth() -> Authenticator {
    let mut auth = Authenticator::new();
    auth.add_token(TOKEN, dev::dev_principal());
    auth.add_certificate_principal(BILLING, vec![Role::Reader, Role::Writer]);
    auth.add_certificate_principal(SUPPORT, vec![Role::Reader]);
    let billing = || Principal {
        name: BILLING.into(),
        roles: vec![Role::Reader, Role::Writer],
    };
    auth.add_token("billing-token", billing());
    let mut expired = TokenGrant::new(billing());
    expired.expires_at = Some(SystemTime::now() - Duration::from_secs(1));
    auth.add_token_grant(hash_token("billing-expired"), expired);
    let mut revoked = TokenGrant::new(billing());
    revoked.revoked = true;
    auth.add_token_grant(hash_token("billing-revoked"), revoked);
    auth
}

async fn mtls_vault(pki: &Pki) -> (tempfile::TempDir, TestVault) {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start_tls(dir.path(), "eu", TlsFixture::mutual(pki, auth()))
        .await
        .unwrap();
    (dir, vault)
}

/// A builder with this vault's URL and CA, `cert` as client certificate
/// and the test purpose.
fn as_client(vault: &TestVault, cert: &CertAndKey) -> ClientBuilder {
    vault
        .client_builder()
        .client_identity_pem(cert.cert_pem.clone(), cert.key_pem.clone())
        .purpose(PURPOSE)
        .timeout(Duration::from_secs(5))
}

/// Connects and makes one call; the error of whichever fails. Under TLS 1.3
/// the server judges the client certificate after the client's side of the
/// handshake, so a refusal shows on connect or on the first call.
async fn first_call(builder: ClientBuilder) -> Result<usize, Error> {
    let client = builder.connect().await?;
    Ok(client.collections().await?.len())
}

/// Asserts that the TLS handshake failed: a connection error, no answer.
/// `reason` is the TLS alert the vault sends (or the client's verdict on
/// the vault's certificate); the client does not always read an alert
/// before it sees the connection close, but when it names one it must be
/// this one.
fn assert_refused_handshake(result: Result<usize, Error>, reason: &str) {
    match result {
        Err(Error::Connect(message)) => {
            if message.contains("alert") || message.contains("invalid peer certificate") {
                assert!(message.contains(reason), "{reason}: {message}");
            }
        }
        other => panic!("expected a failed handshake ({reason}), got {other:?}"),
    }
}

fn permission_denied(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::PermissionDenied(message)) => message,
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
}

fn unauthenticated(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::Unauthenticated(message)) => message,
        other => panic!("expected UNAUTHENTICATED, got {other:?}"),
    }
}

#[tokio::test]
async fn mtls_principal_comes_from_the_uri_san() {
    let pki = Pki::new("eu clients ca");
    let (_dir, vault) = mtls_vault(&pki).await;
    assert!(vault.url().starts_with("https://127.0.0.1:"));

    // No token: the certificate alone authenticates, with the roles of its
    // principal.
    let billing = as_client(&vault, &pki.client_uri(BILLING, Some("ignored-cn")))
        .connect()
        .await
        .unwrap();
    billing.put(&user("u-tls-1", "subject-tls")).await.unwrap();
    let back = billing.get("users", "u-tls-1").await.unwrap();
    assert_eq!(back.subject_id, "subject-tls");

    // A verified certificate whose URI names a principal without roles here
    // is refused by that name: the URI SAN wins over a configured CN.
    let stranger = as_client(
        &vault,
        &pki.client_uri("spiffe://eu.example/stranger", Some(SUPPORT)),
    )
    .connect()
    .await
    .unwrap();
    let message = permission_denied(stranger.get("users", "u-tls-1").await);
    assert!(
        message.contains("spiffe://eu.example/stranger"),
        "{message}"
    );
    vault.stop().await;
}

#[tokio::test]
async fn mtls_principal_falls_back_to_the_common_name() {
    let pki = Pki::new("eu clients ca");
    let (_dir, vault) = mtls_vault(&pki).await;

    let support = as_client(&vault, &pki.client_cn(SUPPORT))
        .connect()
        .await
        .unwrap();
    let names: Vec<String> = support
        .collections()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert!(names.contains(&"users".to_owned()), "{names:?}");
    // A reader does not write.
    permission_denied(support.put(&user("u-tls-2", "subject-tls")).await);

    let nobody = as_client(&vault, &pki.client_cn("nobody-cn"))
        .connect()
        .await
        .unwrap();
    let message = permission_denied(nobody.collections().await);
    assert!(message.contains("nobody-cn"), "{message}");
    vault.stop().await;
}

/// A certificate whose CN is a configured URI principal, but which has no
/// URI SAN, does not pose as it: a CN that looks like a URI is refused.
#[tokio::test]
async fn a_common_name_that_looks_like_a_uri_is_no_principal() {
    let pki = Pki::new("eu clients ca");
    let (_dir, vault) = mtls_vault(&pki).await;
    for cn in [BILLING, "urn:eu.example:billing-service"] {
        let posing = as_client(&vault, &pki.client_cn(cn))
            .connect()
            .await
            .unwrap();
        match posing.collections().await {
            Err(vault_client::Error::Unauthenticated(m)) => {
                assert!(m.contains("looks like a URI"), "{cn}: {m}")
            }
            other => panic!("{cn}: expected UNAUTHENTICATED, got {other:?}"),
        }
    }
    // The same name as a URI SAN is the principal.
    let billing = as_client(&vault, &pki.client_uri(BILLING, None))
        .connect()
        .await
        .unwrap();
    billing.collections().await.unwrap();
    vault.stop().await;
}

#[tokio::test]
async fn handshakes_without_a_valid_client_certificate_are_refused() {
    let pki = Pki::new("eu clients ca");
    let other = Pki::new("some other ca");
    let (_dir, vault) = mtls_vault(&pki).await;

    // No client certificate, even with a valid token.
    assert_refused_handshake(
        first_call(
            vault
                .client_builder()
                .token(TOKEN)
                .purpose(PURPOSE)
                .timeout(Duration::from_secs(5)),
        )
        .await,
        "CertificateRequired",
    );
    // A certificate of another CA, for a configured principal.
    assert_refused_handshake(
        first_call(as_client(&vault, &other.client_uri(BILLING, None))).await,
        "UnknownCA",
    );
    // An expired certificate of the right CA.
    assert_refused_handshake(
        first_call(as_client(&vault, &pki.expired_client(BILLING))).await,
        "CertificateExpired",
    );
    // A client that does not trust the vault's CA refuses the vault.
    let billing = pki.client_uri(BILLING, None);
    assert_refused_handshake(
        first_call(
            VaultClient::builder(vault.url())
                .ca_certificate_pem(other.ca_pem())
                .client_identity_pem(billing.cert_pem, billing.key_pem)
                .timeout(Duration::from_secs(5)),
        )
        .await,
        "UnknownIssuer",
    );
    // Plaintext to a TLS port gets nothing either.
    let plain = VaultClient::builder(format!("http://{}", vault.addr))
        .token(TOKEN)
        .timeout(Duration::from_secs(5));
    assert!(first_call(plain).await.is_err());

    // The right certificate still works afterwards.
    first_call(as_client(&vault, &pki.client_uri(BILLING, None)))
        .await
        .unwrap();
    vault.stop().await;
}

#[tokio::test]
async fn tokens_beside_a_certificate_must_be_live_and_name_its_principal() {
    let pki = Pki::new("eu clients ca");
    let (_dir, vault) = mtls_vault(&pki).await;
    let billing = pki.client_uri(BILLING, None);
    let with_token = |token: &str| as_client(&vault, &billing).token(token);

    // The principal's own token is accepted beside its certificate.
    first_call(with_token("billing-token")).await.unwrap();
    // Another principal's token (the dev token, with every role) is refused.
    let message = unauthenticated(first_call(with_token(TOKEN)).await);
    assert!(message.contains("another principal"), "{message}");
    assert_eq!(
        unauthenticated(first_call(with_token("billing-expired")).await),
        "token expired"
    );
    assert_eq!(
        unauthenticated(first_call(with_token("billing-revoked")).await),
        "token revoked"
    );
    assert_eq!(
        unauthenticated(first_call(with_token("no-such-token")).await),
        "invalid token"
    );
    vault.stop().await;
}

#[tokio::test]
async fn server_tls_with_tokens_refuses_expired_and_revoked_ones() {
    let pki = Pki::new("eu server ca");
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start_tls(dir.path(), "eu", TlsFixture::server_only(&pki, auth()))
        .await
        .unwrap();
    let with_token = |token: &str| {
        vault
            .client_builder()
            .token(token)
            .purpose(PURPOSE)
            .timeout(Duration::from_secs(5))
    };
    // The usual client helpers work over TLS too.
    vault
        .client()
        .await
        .with_purpose(Some(PURPOSE))
        .unwrap()
        .put(&user("u-tls-3", "s"))
        .await
        .unwrap();
    first_call(with_token("billing-token")).await.unwrap();
    assert_eq!(
        unauthenticated(first_call(with_token("billing-expired")).await),
        "token expired"
    );
    assert_eq!(
        unauthenticated(first_call(with_token("billing-revoked")).await),
        "token revoked"
    );
    // Without client CAs no client certificate is asked for: one the
    // client has is not sent, and the token decides.
    let billing = pki.client_uri(BILLING, None);
    let with_cert = || {
        vault
            .client_builder()
            .client_identity_pem(billing.cert_pem.clone(), billing.key_pem.clone())
            .purpose(PURPOSE)
    };
    assert_eq!(
        unauthenticated(first_call(with_cert()).await),
        "missing bearer token"
    );
    first_call(with_cert().token("billing-token"))
        .await
        .unwrap();
    // A client that does not trust the vault's CA refuses it.
    assert_refused_handshake(
        first_call(
            VaultClient::builder(vault.url())
                .ca_certificate_pem(Pki::new("other").ca_pem())
                .token(TOKEN)
                .timeout(Duration::from_secs(5)),
        )
        .await,
        "UnknownIssuer",
    );
    vault.stop().await;
}

/// Runs vaultctl with `args` and the environment `env` (and no other
/// `VAULT_` variable).
pub(crate) async fn vaultctl_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(vaultctl_binary());
    let inherited: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| !k.starts_with("VAULT_"))
        .collect();
    command
        .args(args)
        .env_clear()
        .envs(inherited)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = command.output().await.unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

#[tokio::test]
async fn vaultctl_speaks_mutual_tls() {
    let pki = Pki::new("eu clients ca");
    let (_dir, vault) = mtls_vault(&pki).await;
    let files = tempfile::tempdir().unwrap();
    let ca = files.path().join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let (cert, key) = pki.client_uri(BILLING, None).write(files.path(), "billing");
    let (ca, cert, key) = (
        ca.to_str().unwrap(),
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    );
    let url = vault.url();

    // Flags, no token: the certificate authenticates.
    let run = vaultctl_env(
        &[
            "--addr",
            &url,
            "--ca",
            ca,
            "--cert",
            cert,
            "--key",
            key,
            "--purpose",
            PURPOSE,
            "put",
            "users",
            "u-ctl",
            "--subject",
            "s-ctl",
            "--data",
            r#"{"email":"ctl@example.eu","country":"FR"}"#,
        ],
        &[],
    )
    .await;
    run.ok();
    // The same through the environment.
    let run = vaultctl_env(
        &["get", "users", "u-ctl", "--fields", "country"],
        &[
            ("VAULT_ADDR", &url),
            ("VAULT_CACERT", ca),
            ("VAULT_CLIENT_CERT", cert),
            ("VAULT_CLIENT_KEY", key),
            ("VAULT_PURPOSE", PURPOSE),
        ],
    )
    .await;
    assert!(run.ok().contains("country: FR"), "{run:?}");
    // With a bare address, the TLS flags mean https.
    let bare = vault.addr.to_string();
    let run = vaultctl_env(
        &[
            "--addr",
            &bare,
            "--ca",
            ca,
            "--cert",
            cert,
            "--key",
            key,
            "--purpose",
            PURPOSE,
            "collection",
            "list",
        ],
        &[],
    )
    .await;
    assert!(run.ok().contains("users"), "{run:?}");

    // Without a client certificate the handshake fails: one line, exit 1.
    let message = vaultctl_env(
        &[
            "--addr",
            &url,
            "--ca",
            ca,
            "--token",
            TOKEN,
            "collection",
            "list",
        ],
        &[],
    )
    .await
    .error(1);
    assert!(message.starts_with("cannot reach the vault"), "{message}");
    // Files that are not what they should be: one line naming the file.
    let message = vaultctl_env(
        &[
            "--addr",
            &url,
            "--ca",
            ca,
            "--cert",
            key,
            "--key",
            key,
            "collection",
            "list",
        ],
        &[],
    )
    .await
    .error(1);
    assert_eq!(
        message,
        format!("invalid input: the client certificate file {key} holds no PEM certificate")
    );
    let other = pki.client_cn("other");
    let (_, other_key) = other.write(files.path(), "other");
    let message = vaultctl_env(
        &[
            "--addr",
            &url,
            "--ca",
            ca,
            "--cert",
            cert,
            "--key",
            other_key.to_str().unwrap(),
            "collection",
            "list",
        ],
        &[],
    )
    .await
    .error(1);
    assert!(
        message.contains("is not the key of the client certificate file"),
        "{message}"
    );
    let missing = files.path().join("missing.pem");
    let message = vaultctl_env(
        &[
            "--addr",
            &url,
            "--ca",
            missing.to_str().unwrap(),
            "--cert",
            cert,
            "--key",
            key,
            "collection",
            "list",
        ],
        &[],
    )
    .await
    .error(1);
    assert!(
        message.starts_with(&format!(
            "invalid input: cannot read the CA certificate file {}",
            missing.display()
        )),
        "{message}"
    );
    let message = vaultctl_env(&["--addr", &url, "--cert", cert, "collection", "list"], &[])
        .await
        .error(2);
    assert!(message.starts_with("--cert needs --key"), "{message}");
    vault.stop().await;
}

/// Writes a `vault-server --config` file for mutual TLS with `pki`'s files
/// in `dir`, and a custodian principal `custodian-alice` (by CN).
fn write_tls_config(dir: &std::path::Path, pki: &Pki) -> std::path::PathBuf {
    let (cert, key) = pki.server().write(dir, "server");
    let ca = dir.join("clients-ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let config = dir.join("vault.toml");
    std::fs::write(
        &config,
        format!(
            r#"
region = "eu"
listen = "127.0.0.1:0"
data_dir = "{data}"

[tls]
cert_file = "{cert}"
key_file = "{key}"
client_ca_file = "{ca}"

[[principals]]
name = "custodian-alice"
roles = ["custodian"]
"#,
            data = dir.join("data").display(),
            cert = cert.display(),
            key = key.display(),
            ca = ca.display(),
        ),
    )
    .unwrap();
    config
}

#[tokio::test]
async fn the_binary_serves_mutual_tls_from_its_config() {
    use tokio::io::{AsyncBufReadExt as _, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("eu clients ca");
    let config = write_tls_config(dir.path(), &pki);
    let mut child = Command::new(vault_tests::server_binary())
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut listening = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.starts_with("vault-server listening on ") {
            listening = Some(line);
            break;
        }
    }
    let listening = listening.expect("listening line");
    assert!(
        listening.ends_with("(region eu, mutual TLS)"),
        "{listening}"
    );
    let addr = listening.split_whitespace().nth(3).unwrap().to_owned();

    let alice = pki.client_cn("custodian-alice");
    let custodian = VaultClient::builder(format!("https://{addr}"))
        .ca_certificate_pem(pki.ca_pem())
        .client_identity_pem(alice.cert_pem, alice.key_pem)
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let status = custodian.status().await.unwrap();
    assert!(!status.initialized);
    // No client certificate: no answer.
    assert_refused_handshake(
        first_call(
            VaultClient::builder(format!("https://{addr}"))
                .ca_certificate_pem(pki.ca_pem())
                .token(TOKEN)
                .timeout(Duration::from_secs(5)),
        )
        .await,
        "CertificateRequired",
    );
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

#[tokio::test]
async fn the_binary_names_a_bad_tls_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("eu clients ca");
    let config = write_tls_config(dir.path(), &pki);
    let run = |config: std::path::PathBuf| async move {
        let out = Command::new(vault_tests::server_binary())
            .arg("--config")
            .arg(&config)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };

    // The key file holds a certificate.
    let text = std::fs::read_to_string(&config).unwrap();
    let server_key = dir.path().join("server.key");
    let server_pem = dir.path().join("server.pem");
    let swapped = dir.path().join("swapped.toml");
    std::fs::write(
        &swapped,
        text.replace(
            &format!("key_file = \"{}\"", server_key.display()),
            &format!("key_file = \"{}\"", server_pem.display()),
        ),
    )
    .unwrap();
    let stderr = run(swapped).await;
    assert!(
        stderr.contains(&format!(
            "tls.key_file {}: no private key",
            server_pem.display()
        )),
        "{stderr}"
    );
    // A missing client CA file.
    std::fs::remove_file(dir.path().join("clients-ca.pem")).unwrap();
    let stderr = run(config).await;
    assert!(stderr.contains("reading tls.client_ca_file"), "{stderr}");
    assert!(stderr.contains("clients-ca.pem"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
