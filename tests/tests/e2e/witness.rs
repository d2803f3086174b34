//! The witness (`vaultctl audit witness`, run as the auditor would) against
//! real vaults: it cosigns a growing log across restarts of both sides, the
//! vault serves the cosignatures with its checkpoints and exports, `audit
//! verify --witness-key` needs them, and a forked or rolled-back log is
//! refused and raises a critical alert (which seals a vault configured to).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vault_client::audit::WitnessKey;
use vault_server::monitor::{Monitor, MonitorOptions, OnCritical, SystemClock};
use vault_server::vault::OpenOptions;
use vault_tests::{TestVault, TOKEN};

use crate::custody::copy_dir;
use crate::user;
use crate::vaultctl::{vaultctl_at, Run};

/// A witness's files: its private key, its state, the vault's public key.
struct Witness {
    key: PathBuf,
    state: PathBuf,
    vault_key: PathBuf,
    verifier: String,
}

async fn run(vault: &TestVault, args: &[&str]) -> Run {
    vaultctl_at(&vault.url(), Some(TOKEN), args, None).await
}

/// Makes a witness key named `name` in `dir` with `vaultctl audit
/// witness-key`, as an auditor would.
async fn witness_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{}.key", name.replace('/', "_")));
    let out = vaultctl_at(
        "http://127.0.0.1:1",
        None,
        &["audit", "witness-key", name, "--out", key.to_str().unwrap()],
        None,
    )
    .await;
    let verifier = out.ok().trim().to_owned();
    verifier.parse::<WitnessKey>().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key file is readable by others");
    }
    (key, verifier)
}

fn options(data: &Path, witnesses: &[&str], on_critical: OnCritical) -> OpenOptions {
    let mut opts = OpenOptions::dev(data, "eu".parse().unwrap());
    opts.engine.witnesses = witnesses.iter().map(|w| w.parse().unwrap()).collect();
    opts.engine.monitor = Arc::new(Monitor::new(
        MonitorOptions {
            on_critical,
            ..MonitorOptions::default()
        },
        Arc::new(SystemClock),
    ));
    opts
}

async fn witness_round(vault: &TestVault, w: &Witness) -> Run {
    witness_run(vault, w, &[]).await
}

/// The first round: `--init` creates the state.
async fn witness_init(vault: &TestVault, w: &Witness) -> Run {
    witness_run(vault, w, &["--init"]).await
}

/// One `audit witness --once` round, with `extra` arguments.
async fn witness_run(vault: &TestVault, w: &Witness, extra: &[&str]) -> Run {
    let mut args = vec![
        "audit",
        "witness",
        "--once",
        "--signing-key",
        w.key.to_str().unwrap(),
        "--state",
        w.state.to_str().unwrap(),
        "--public-key",
        w.vault_key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(vault, &args).await
}

async fn put_users(vault: &TestVault, prefix: &str, n: usize) {
    let client = vault.client().await;
    for i in 0..n {
        client
            .put(&user(&format!("{prefix}-{i}"), &format!("s-{prefix}-{i}")))
            .await
            .unwrap();
    }
}

async fn setup_witness(dir: &Path, vault: &TestVault) -> Witness {
    let (key, verifier) = witness_key(dir, "witness.auditor.example/eu").await;
    let vault_key = dir.join("vault.pub");
    let printed = run(vault, &["audit", "public-key"]).await;
    std::fs::write(&vault_key, printed.ok()).unwrap();
    Witness {
        key,
        state: dir.join("witness.state"),
        vault_key,
        verifier,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_cosigns_a_growing_log_across_restarts_and_verify_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (key, verifier) = witness_key(dir.path(), "witness.auditor.example/eu").await;
    let (_, other) = witness_key(dir.path(), "witness.other.example/eu").await;
    let witnesses = [verifier.as_str(), other.as_str()];

    let vault = TestVault::start_dev_with(options(&data, &witnesses, OnCritical::Alert))
        .await
        .unwrap();
    let vault_key = dir.path().join("vault.pub");
    std::fs::write(&vault_key, run(&vault, &["audit", "public-key"]).await.ok()).unwrap();
    let w = Witness {
        key,
        state: dir.path().join("witness.state"),
        vault_key,
        verifier: verifier.clone(),
    };
    put_users(&vault, "a", 5).await;

    // Without a state file, only --init starts (a lost state must not
    // silently start trusting anew).
    let missing = witness_round(&vault, &w).await;
    assert!(missing.error(1).contains("--init"), "{missing:?}");
    // First round: nothing seen before, so the current checkpoint is
    // trusted on first use and cosigned.
    let first = witness_init(&vault, &w).await;
    assert!(first.ok().contains("trusted on first use"), "{first:?}");
    let witness: WitnessKey = w.verifier.parse().unwrap();
    let state = std::fs::read(&w.state).unwrap();
    let first_time = witness.cosignature_time(&state).unwrap();
    // The vault serves its checkpoint with the cosignature.
    let client = vault.client().await;
    let served = client.audit_checkpoints(0).await.unwrap();
    assert!(
        served
            .iter()
            .any(|note| witness.cosignature_time(note.as_bytes()) == Ok(first_time)),
        "{served:?}"
    );
    // The vault keeps the time of the witness's last cosignature (the
    // metric `vault_audit_witness_cosignature_age_seconds`).
    assert!(vault
        .vault
        .monitor()
        .cosignature_age_secs("witness.auditor.example/eu")
        .is_some());
    // Again at once: the same checkpoint would do, but the log grew by the
    // witness's own requests, so it cosigns the larger one.
    let again = witness_round(&vault, &w).await;
    assert!(again.ok().contains("consistent with size"), "{again:?}");
    // --init again, with a state: refused (a service that always passes it
    // would otherwise trust anew whenever its state went missing).
    let again_init = witness_init(&vault, &w).await;
    assert!(
        again_init.error(1).contains("first run only"),
        "{again_init:?}"
    );
    vault.stop().await;

    // Both sides restart: a new vault process over the same folder, a new
    // witness process with the same state.
    let vault = TestVault::start_dev_with(options(&data, &witnesses, OnCritical::Alert))
        .await
        .unwrap();
    put_users(&vault, "b", 5).await;
    let json = witness_run(&vault, &w, &["--json"]).await.json();
    assert_eq!(json["event"], "cosigned", "{json}");
    let size = json["tree_size"].as_u64().unwrap();
    assert!(json["previous_size"].as_u64().unwrap() < size, "{json}");

    // The export carries the cosignature; verify needs it.
    let export = dir.path().join("export");
    run(&vault, &["audit", "export", export.to_str().unwrap()])
        .await
        .ok();
    let witness_file = dir.path().join("witness.pub");
    std::fs::write(&witness_file, format!("{}\n", w.verifier)).unwrap();
    let other_file = dir.path().join("other.pub");
    std::fs::write(&other_file, format!("{other}\n")).unwrap();
    let verify = |extra: Vec<String>| {
        let export = export.clone();
        let vault_key = w.vault_key.clone();
        async move {
            let mut args: Vec<String> = vec![
                "audit".into(),
                "verify".into(),
                export.to_str().unwrap().into(),
                "--public-key".into(),
                vault_key.to_str().unwrap().into(),
            ];
            args.extend(extra);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            vaultctl_at("http://127.0.0.1:1", None, &args, None).await
        }
    };
    let ok = verify(vec![
        "--witness-key".into(),
        witness_file.display().to_string(),
    ])
    .await;
    assert!(
        ok.ok().contains(&format!(
            "witnessed up to size {size} by witness.auditor.example/eu"
        )),
        "{ok:?}"
    );
    // The export's latest checkpoint came after the cosigned one: the
    // events after it are counted, and --max-unwitnessed bounds them.
    assert!(ok.stdout.contains("not witnessed)"), "{ok:?}");
    let tail = verify(vec![
        "--witness-key".into(),
        witness_file.display().to_string(),
        "--max-unwitnessed".into(),
        "0".into(),
    ])
    .await;
    assert_eq!(tail.code, Some(1), "{tail:?}");
    assert!(tail.stdout.contains("not_witnessed"), "{tail:?}");
    verify(vec![
        "--witness-key".into(),
        witness_file.display().to_string(),
        "--max-unwitnessed".into(),
        "1000".into(),
    ])
    .await
    .ok();
    // A witness that never cosigned: not witnessed (exit 1).
    let none = verify(vec![
        "--witness-key".into(),
        other_file.display().to_string(),
    ])
    .await;
    assert_eq!(none.code, Some(1), "{none:?}");
    assert!(none.stdout.contains("not_witnessed"), "{none:?}");
    // Two of two: not met; one of two: met.
    let both = |needed: &str| {
        vec![
            "--witness-key".to_owned(),
            witness_file.display().to_string(),
            "--witness-key".to_owned(),
            other_file.display().to_string(),
            "--witnesses-needed".to_owned(),
            needed.to_owned(),
        ]
    };
    assert_eq!(verify(both("2")).await.code, Some(1));
    verify(both("1")).await.ok();
    // The same export without its cosignatures fails with the witness key.
    for entry in std::fs::read_dir(export.join("checkpoints")).unwrap() {
        let path = entry.unwrap().path();
        let note = std::fs::read_to_string(&path).unwrap();
        let stripped: String = note
            .lines()
            .filter(|l| !l.starts_with("\u{2014} witness."))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, stripped).unwrap();
    }
    let stripped = verify(vec![
        "--witness-key".into(),
        witness_file.display().to_string(),
    ])
    .await;
    assert_eq!(stripped.code, Some(1), "{stripped:?}");
    assert!(stripped.stdout.contains("not_witnessed"), "{stripped:?}");
    // A cosigned checkpoint the auditor kept (the witness's state) does not
    // stand in for the export's own cosignatures.
    let with_state = verify(vec![
        "--witness-key".into(),
        witness_file.display().to_string(),
        "--trusted-checkpoint".into(),
        w.state.display().to_string(),
    ])
    .await;
    assert_eq!(with_state.code, Some(1), "{with_state:?}");
    assert!(
        with_state.stdout.contains("not_witnessed"),
        "{with_state:?}"
    );
    // …and verifies without it (the vault's signatures are intact).
    verify(Vec::new()).await.ok();

    // A vault with no witnesses configured takes no cosignature.
    let lone = TestVault::start_dev_with(options(&dir.path().join("lone"), &[], OnCritical::Alert))
        .await
        .unwrap();
    std::fs::create_dir_all(dir.path().join("lone-witness")).unwrap();
    let lone_witness = setup_witness(&dir.path().join("lone-witness"), &lone).await;
    let refused = witness_init(&lone, &lone_witness).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.stderr.contains("[audit] witnesses"), "{refused:?}");
    lone.stop().await;
    vault.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_refuses_a_fork_and_a_rollback_and_the_vault_raises_a_critical_alert() {
    if vault_tests::skip_on_postgres("forks a copy of RocksDB's folder") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(dir.path().join("w")).unwrap();
    let (key, verifier) = witness_key(&dir.path().join("w"), "witness.auditor.example/eu").await;
    let witnesses = [verifier.as_str()];

    // A history, copied aside twice while the vault is stopped.
    let vault = TestVault::start_dev_with(options(&data, &witnesses, OnCritical::Alert))
        .await
        .unwrap();
    put_users(&vault, "base", 3).await;
    let vault_key = dir.path().join("vault.pub");
    std::fs::write(&vault_key, run(&vault, &["audit", "public-key"]).await.ok()).unwrap();
    vault.stop().await;
    let fork_data = dir.path().join("fork");
    let old_data = dir.path().join("old");
    copy_dir(&data, &fork_data);
    copy_dir(&data, &old_data);

    // The witness follows the real history as it grows.
    let vault = TestVault::start_dev_with(options(&data, &witnesses, OnCritical::Alert))
        .await
        .unwrap();
    put_users(&vault, "real", 20).await;
    let w = Witness {
        key,
        state: dir.path().join("witness.state"),
        vault_key,
        verifier: verifier.clone(),
    };
    witness_init(&vault, &w).await.ok();
    let seen = std::fs::read(&w.state).unwrap();
    vault.stop().await;

    // A fork: the copy, with the same keys, given other events (more of
    // them than the witness saw), signed anew by the vault's key. The
    // witness refuses it, keeps its state, and the vault (configured to)
    // seals on the critical alert.
    let fork = TestVault::start_dev_with(options(&fork_data, &witnesses, OnCritical::Seal))
        .await
        .unwrap();
    put_users(&fork, "forged", 30).await;
    let mut alerts = fork.client().await.watch_alerts().await.unwrap();
    let mut sealed = fork.vault.watch_sealed();
    let refused = witness_round(&fork, &w).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stdout.contains("REFUSED") && refused.stdout.contains("fork"),
        "{refused:?}"
    );
    assert_eq!(std::fs::read(&w.state).unwrap(), seen, "the state moved");
    let alert = tokio::time::timeout(Duration::from_secs(5), alerts.next())
        .await
        .expect("no alert")
        .unwrap()
        .expect("the alert stream ended");
    assert_eq!(alert.kind, "witness_refused");
    assert_eq!(alert.severity, "critical");
    assert!(
        alert.message.contains("witness.auditor.example/eu"),
        "{alert:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), sealed.wait_for(|s| *s))
        .await
        .expect("the vault did not seal on the witness's refusal")
        .unwrap();
    fork.stop().await;

    // A rollback: the older copy, with fewer events than the witness saw.
    let old = TestVault::start_dev_with(options(&old_data, &witnesses, OnCritical::Alert))
        .await
        .unwrap();
    let mut alerts = old.client().await.watch_alerts().await.unwrap();
    let refused = witness_round(&old, &w).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.stdout.contains("rollback"), "{refused:?}");
    let alert = tokio::time::timeout(Duration::from_secs(5), alerts.next())
        .await
        .expect("no alert")
        .unwrap()
        .expect("the alert stream ended");
    assert_eq!(alert.kind, "witness_refused");
    // The alert is in the signed log too (written by the monitor's own
    // thread: waited for as the log grows).
    let log = old.vault.audit_log();
    let mut grown = log.watch_size();
    let is_alert = |raw: &Vec<u8>| {
        let ev: serde_json::Value = serde_json::from_slice(raw).unwrap();
        ev["operation"] == "alert"
            && ev["detail"]
                .as_str()
                .is_some_and(|d| d.contains("witness_refused"))
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            grown.borrow_and_update();
            if log.events(0, 100_000).unwrap().iter().any(is_alert) {
                return;
            }
            grown.changed().await.unwrap();
        }
    })
    .await
    .expect("no witness_refused alert in the audit log");
    old.stop().await;

    // The real history, restarted, is still cosigned.
    let vault = TestVault::start_dev_with(options(&data, &witnesses, OnCritical::Alert))
        .await
        .unwrap();
    let ok = witness_round(&vault, &w).await;
    assert!(ok.ok().contains("consistent with size"), "{ok:?}");
    vault.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_running_witness_follows_the_log_as_it_grows() {
    use tokio::io::AsyncBufReadExt as _;
    let dir = tempfile::tempdir().unwrap();
    let (key, verifier) = witness_key(dir.path(), "witness.auditor.example/eu").await;
    let vault = TestVault::start_dev_with(options(
        &dir.path().join("data"),
        &[verifier.as_str()],
        OnCritical::Alert,
    ))
    .await
    .unwrap();
    let vault_key = dir.path().join("vault.pub");
    std::fs::write(&vault_key, run(&vault, &["audit", "public-key"]).await.ok()).unwrap();
    let mut child = tokio::process::Command::new(vault_tests::vaultctl_binary())
        .args([
            "--json",
            "audit",
            "witness",
            "--init",
            "--interval",
            "0.1",
            "--signing-key",
            key.to_str().unwrap(),
            "--state",
            dir.path().join("state").to_str().unwrap(),
            "--public-key",
            vault_key.to_str().unwrap(),
        ])
        .env("VAULT_ADDR", vault.url())
        .env("VAULT_TOKEN", TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> serde_json::Value {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the witness printed nothing for 10 s")
            .unwrap()
            .expect("the witness exited");
        serde_json::from_str(&line).unwrap()
    };
    let first = next().await;
    assert_eq!(first["event"], "cosigned", "{first}");
    assert!(first["previous_size"].is_null(), "{first}");
    // Its own requests grow the log, and so do the service's: every new
    // checkpoint is shown consistent with the one before and cosigned.
    let mut size = first["tree_size"].as_u64().unwrap();
    for round in 0..3 {
        put_users(&vault, &format!("r{round}"), 3).await;
        let line = next().await;
        assert_eq!(line["event"], "cosigned", "{line}");
        assert!(line["previous_size"].as_u64().unwrap() >= size, "{line}");
        assert!(line["tree_size"].as_u64().unwrap() > size, "{line}");
        size = line["tree_size"].as_u64().unwrap();
    }
    child.kill().await.unwrap();
    vault.stop().await;
}
