//! The `vault-server` binary itself: dev mode prints its address and tokens,
//! serves health and data, stops on SIGTERM, refuses a folder of another
//! region, accidental plaintext and mixed duties, and audits policy reloads.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use vault_client::VaultClient;
use vault_tests::server_binary;

use crate::user;

#[tokio::test]
async fn dev_mode_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(server_binary())
        .args([
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--dev-token",
            "binary-test-token",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = None;
    let mut token_line = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(rest) = line.strip_prefix("vault-server listening on ") {
            addr = rest.split_whitespace().next().map(str::to_owned);
        }
        if line.starts_with("export VAULT_TOKEN=") {
            token_line = Some(line);
            break;
        }
    }
    let addr = addr.expect("address line");
    assert_eq!(
        token_line.as_deref(),
        Some("export VAULT_TOKEN=binary-test-token")
    );

    let url = format!("http://{addr}");
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "vault.v1.VaultService".into(),
        })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status(), ServingStatus::Serving);

    let client = VaultClient::connect(url, "binary-test-token")
        .await
        .unwrap()
        .with_purpose(Some(vault_tests::PURPOSE))
        .unwrap();
    assert_eq!(
        client.collection("users").await.unwrap().fields.len(),
        5,
        "dev mode seeds users"
    );
    client.put(&user("u1", "s1")).await.unwrap();
    assert_eq!(client.get("users", "u1").await.unwrap(), user("u1", "s1"));
    drop(client);

    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().await.unwrap();
    assert!(exit.success(), "graceful exit on SIGTERM: {exit:?}");
}

#[tokio::test]
async fn the_binary_refuses_a_folder_of_another_region() {
    let dir = tempfile::tempdir().unwrap();
    let vault = vault_tests::TestVault::start(dir.path(), "eu")
        .await
        .unwrap();
    vault.stop().await;
    let mut command = Command::new(server_binary());
    if vault_tests::on_postgres() {
        command.env(
            "VAULT_POSTGRES_URL",
            vault_tests::postgres_database_for(dir.path()).await,
        );
    }
    let out = command
        .args([
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--region",
            "us",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("keyring is bound to region eu; this server is configured for region us"),
        "{stderr}"
    );
}

/// Runs the binary with `args` until it exits; its status and stderr.
async fn run_to_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = Command::new(server_binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A configuration file in `dir` (region eu, its data in `dir/data`) with
/// `extra` before the tables and `tables` after.
pub(crate) fn config_file(dir: &std::path::Path, extra: &str, tables: &str) -> String {
    let path = dir.join("vault.toml");
    std::fs::write(
        &path,
        format!(
            "region = \"eu\"\ndata_dir = {:?}\n{extra}\n{tables}",
            dir.join("data").display().to_string()
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

pub(crate) fn token_entry(principal: &str, token: &str, roles: &str) -> String {
    format!(
        "[[tokens]]\nprincipal = \"{principal}\"\nsha256 = \"{}\"\nroles = {roles}\n",
        hex::encode(vault_server::service::hash_token(token))
    )
}

/// Accidental plaintext and mixed duties stop the binary at start, with a
/// message that says what to change.
#[tokio::test]
async fn the_binary_refuses_plaintext_beyond_loopback_and_mixed_duties() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let (status, stderr) = run_to_exit(&[
        "--dev",
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .await;
    assert!(!status.success());
    assert!(
        stderr.contains("loopback only") && stderr.contains("--dev-listen-anywhere"),
        "{stderr}"
    );
    assert!(!data.exists(), "refused before the folder is made");

    let svc = token_entry("svc", "svc-token", "[\"reader\"]");
    let public = config_file(dir.path(), "listen = \"0.0.0.0:0\"", &svc);
    let (status, stderr) = run_to_exit(&["--config", &public]).await;
    assert!(!status.success());
    assert!(
        stderr.contains("refusing to listen in plaintext on 0.0.0.0:0")
            && stderr.contains("danger_allow_plaintext"),
        "{stderr}"
    );
    // --listen overrides are checked too.
    let local = config_file(dir.path(), "listen = \"127.0.0.1:0\"", &svc);
    let (status, stderr) = run_to_exit(&["--config", &local, "--listen", "0.0.0.0:0"]).await;
    assert!(!status.success());
    assert!(
        stderr.contains("refusing to listen in plaintext"),
        "{stderr}"
    );

    let both = token_entry("both", "both-token", "[\"custodian\", \"dpo\"]");
    let mixed = config_file(dir.path(), "listen = \"127.0.0.1:0\"", &both);
    let (status, stderr) = run_to_exit(&["--config", &mixed]).await;
    assert!(!status.success());
    assert!(stderr.contains("separate duties"), "{stderr}");

    // A policy file under which a credential's roles hold both duties.
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[roles.custodian.rules]]\noperations = [\"custody\"]\n\
         [[roles.auditor.rules]]\noperations = [\"audit\", \"read\"]\npurposes = [\"*\"]\n",
    )
    .unwrap();
    let auditing_custodian = token_entry("c", "c-token", "[\"custodian\", \"auditor\"]");
    let mixed = config_file(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:0\"\npolicy_file = {:?}",
            policy.display().to_string()
        ),
        &auditing_custodian,
    );
    let (status, stderr) = run_to_exit(&["--config", &mixed]).await;
    assert!(!status.success());
    assert!(
        stderr.contains("principal c") && stderr.contains("separate duties"),
        "{stderr}"
    );
}

/// A started binary: its address (as a loopback URL), and its stdout lines.
pub(crate) struct Started {
    child: tokio::process::Child,
    pub(crate) url: String,
    pub(crate) lines: Vec<String>,
}

/// Starts the binary with `args` and reads stdout up to the line that
/// starts with `last` (the address line comes first).
async fn start(args: &[&str], last: &str) -> Started {
    start_with_env(args, &[], last).await
}

/// [`start`] with extra environment variables.
pub(crate) async fn start_with_env(args: &[&str], env: &[(&str, &str)], last: &str) -> Started {
    let mut child = Command::new(server_binary())
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    let mut port = None;
    while let Some(line) = tokio::time::timeout(std::time::Duration::from_secs(60), out.next_line())
        .await
        .unwrap_or_else(|_| panic!("no line {last:?} within a minute; so far: {lines:?}"))
        .unwrap()
    {
        if let Some(rest) = line.strip_prefix("vault-server listening on ") {
            let addr: std::net::SocketAddr =
                rest.split_whitespace().next().unwrap().parse().unwrap();
            port = Some(addr.port());
        }
        let done = line.starts_with(last);
        lines.push(line);
        if done {
            break;
        }
    }
    let Some(port) = port else {
        let out = child.wait_with_output().await.unwrap();
        panic!(
            "no address line ({:?}); stdout {lines:?}; stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    Started {
        child,
        url: format!("http://127.0.0.1:{port}"),
        lines,
    }
}

impl Started {
    /// Stops it with SIGTERM; it must exit cleanly. Its stderr.
    pub(crate) async fn stop(self) -> String {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
        let out = self.child.wait_with_output().await.unwrap();
        assert!(out.status.success(), "graceful exit: {:?}", out.status);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// Dev mode has two tokens (data, and custody); `--dev-listen-anywhere`
/// opens it beyond loopback, which the log warns of and `operator status`
/// shows.
#[tokio::test]
async fn dev_mode_keeps_custody_apart_and_says_how_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let vault = start(
        &[
            "--dev",
            "--listen",
            "0.0.0.0:0",
            "--dev-listen-anywhere",
            "--dev-token",
            "data-token",
            "--dev-custodian-token",
            "custody-token",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        "custody (operator commands)",
    )
    .await;
    assert!(
        vault
            .lines
            .iter()
            .any(|l| l.ends_with("VAULT_CUSTODIAN_TOKEN=custody-token")),
        "{:?}",
        vault.lines
    );
    let custodian = VaultClient::connect(vault.url.clone(), "custody-token")
        .await
        .unwrap();
    let status = custodian.status().await.unwrap();
    assert_eq!(status.transport, "plaintext (allowed on any address)");
    assert!(!status.root_rotation_due);
    assert_eq!(status.rotate_root_after_wraps, 1 << 31);
    let data_caller = VaultClient::connect(vault.url.clone(), "data-token")
        .await
        .unwrap()
        .with_purpose(Some(vault_tests::PURPOSE))
        .unwrap();
    data_caller.put(&user("u1", "s1")).await.unwrap();
    // A custodian reads no data; the data token performs no custody.
    let custodian = custodian.with_purpose(Some(vault_tests::PURPOSE)).unwrap();
    assert!(matches!(
        custodian.get("users", "u1").await,
        Err(vault_client::Error::PermissionDenied(_))
    ));
    assert!(matches!(
        data_caller.status().await,
        Err(vault_client::Error::PermissionDenied(_))
    ));
    // The first subject key was counted as a wrap of root version 1.
    let keys = custodian.root_keys().await.unwrap();
    assert_eq!(keys.versions[0].wraps, 1, "{keys:?}");
    drop((custodian, data_caller));
    let stderr = vault.stop().await;
    assert!(
        stderr.contains("plaintext on a non-loopback address"),
        "{stderr}"
    );
}

/// The next reload event on an audit stream (the stream waits for it).
async fn next_reload(follow: &mut vault_client::AuditFollow) -> serde_json::Value {
    loop {
        let page = tokio::time::timeout(std::time::Duration::from_secs(30), follow.next())
            .await
            .expect("a reload event")
            .unwrap()
            .expect("the stream goes on");
        for raw in page.events {
            let ev: serde_json::Value = serde_json::from_slice(&raw).unwrap();
            if ev["operation"] == "reload_policy" {
                return ev;
            }
        }
    }
}

/// Every policy reload, by SIGHUP or by `AdminService`, done or refused, is
/// an audit event naming the SHA-256 of the policy text in force.
#[tokio::test]
async fn policy_reloads_leave_events_with_the_policy_in_force() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    let first = "[[roles.custodian.rules]]\noperations = [\"custody\"]\n\
                 [[roles.auditor.rules]]\noperations = [\"audit\"]\n\
                 [[roles.admin.rules]]\noperations = [\"admin\"]\n";
    std::fs::write(&policy, first).unwrap();
    let tokens = [
        token_entry("keeper", "custody-token", "[\"custodian\"]"),
        token_entry("auditor", "audit-token", "[\"auditor\"]"),
        token_entry("admin", "admin-token", "[\"admin\"]"),
    ]
    .concat();
    let config = config_file(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:0\"\npolicy_file = {:?}",
            policy.display().to_string()
        ),
        &tokens,
    );
    let vault = start(&["--config", &config], "vault is not initialised").await;
    let custodian = VaultClient::connect(vault.url.clone(), "custody-token")
        .await
        .unwrap();
    let init = custodian.init(1, 1).await.unwrap();
    custodian.unseal(&init.shares[0]).await.unwrap();
    let auditor = VaultClient::connect(vault.url.clone(), "audit-token")
        .await
        .unwrap();
    let mut follow = auditor.audit_follow(0).await.unwrap();
    let pid = vault.child.id().unwrap().to_string();
    let hup = || {
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success())
    };
    let hash = |text: &str| hex::encode(Sha256::digest(text.as_bytes()));

    // SIGHUP with a changed, valid file: in force, named by its hash.
    let second = format!("{first}# reviewed\n");
    std::fs::write(&policy, &second).unwrap();
    hup();
    let ev = next_reload(&mut follow).await;
    assert_eq!(ev["decision"], "allowed", "{ev}");
    assert_eq!(ev["principal"], "vault (SIGHUP)", "{ev}");
    let detail = ev["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("sha256:{}", hash(&second))),
        "{ev}"
    );

    // SIGHUP with a broken file: refused, the second one stays in force.
    std::fs::write(&policy, "[[roles.x.rules]]\noperations = [\"fly\"]\n").unwrap();
    hup();
    let ev = next_reload(&mut follow).await;
    assert_ne!(ev["decision"], "allowed", "{ev}");
    let detail = ev["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("refused") && detail.contains(&format!("sha256:{}", hash(&second))),
        "{ev}"
    );

    // The same through AdminService.
    let admin = VaultClient::connect(vault.url.clone(), "admin-token")
        .await
        .unwrap();
    assert!(admin.reload_policy().await.is_err());
    let ev = next_reload(&mut follow).await;
    assert_eq!(ev["principal"], "admin", "{ev}");
    assert!(
        ev["detail"].as_str().unwrap().starts_with("refused"),
        "{ev}"
    );
    std::fs::write(&policy, first).unwrap();
    admin.reload_policy().await.unwrap();
    let ev = next_reload(&mut follow).await;
    assert_eq!(ev["decision"], "allowed", "{ev}");
    assert!(
        ev["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("sha256:{}", hash(first))),
        "{ev}"
    );
    drop((custodian, auditor, admin, follow));
    vault.stop().await;
}

/// Without a policy file a production vault says at start that the
/// built-in policy (every purpose, every field plain) is in force.
#[tokio::test]
async fn a_vault_without_a_policy_file_or_with_its_keyring_in_the_data_folder_warns_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        "listen = \"127.0.0.1:0\"",
        &token_entry("keeper", "custody-token", "[\"custodian\"]"),
    );
    let vault = start(&["--config", &config], "vault is not initialised").await;
    let stderr = vault.stop().await;
    assert!(
        stderr.contains("no policy_file: the built-in role policy is in force"),
        "{stderr}"
    );
    // The default keyring file is inside the data folder: warned too.
    let inside = "the keyring file is inside the data folder";
    assert!(stderr.contains(inside), "{stderr}");
    let apart = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:0\"\nkeyring_file = {:?}",
            apart.path().join("keyring").display().to_string()
        ),
        &token_entry("keeper", "custody-token", "[\"custodian\"]"),
    );
    let vault = start(&["--config", &config], "vault is not initialised").await;
    let stderr = vault.stop().await;
    assert!(!stderr.contains(inside), "{stderr}");
}
