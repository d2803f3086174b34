//! The `vault-server` binary itself: dev mode prints its address and token,
//! serves health and data, stops on SIGTERM, and refuses a folder of another region.

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
    let out = Command::new(server_binary())
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
