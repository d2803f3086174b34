//! The load generator, briefly: it runs against a vault of its own and
//! its baselines (RocksDB, a gRPC echo, a real PostgreSQL server that
//! `scripts/prereqs --with-postgres` installed), and writes well-formed
//! reports. Not a speed test: the
//! figures are only checked to exist.

use tokio::process::Command;
use vault_tests::bench_binary;

#[tokio::test]
async fn a_short_run_writes_a_json_result_and_an_html_report() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("report");
    let run = Command::new(bench_binary())
        .args([
            "--duration",
            "0.5",
            "--clients",
            "2",
            "--records",
            "20",
            "--fields",
            "3",
            "--value-size",
            "16",
            "--baselines",
            "--postgres",
            "--quiet",
            "--repeat",
            "2",
            "--out",
        ])
        .arg(&dir)
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    let text = String::from_utf8(run.stdout).unwrap();
    assert!(text.contains("ratio vault get / rocksdb get"), "{text}");
    assert_eq!(text.matches("median of 2 repeats").count(), 4, "{text}");

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(json["version"], 1);
    let targets: Vec<&str> = json["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["vault", "rocksdb", "echo", "postgres"]);
    for r in json["runs"].as_array().unwrap() {
        assert!(r["total"]["count"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        let repeats = r["repeats"].as_array().unwrap();
        assert_eq!(repeats.len(), 2, "{r}");
        assert!(
            repeats
                .iter()
                .any(|x| x["ops_per_sec"] == r["total"]["ops_per_sec"]),
            "the figures are one repeat's: {r}"
        );
        for key in ["p50_us", "p95_us", "p99_us", "max_us", "ops_per_sec"] {
            assert!(r["total"][key].is_number(), "{key}");
        }
        assert!(!r["timeline"].as_array().unwrap().is_empty());
    }
    assert_eq!(json["config"]["record_plaintext_bytes"], 3 * (2 + 2 + 16));
    assert!(
        json["config"]["self_hosted_data_folder_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    let by_table = &json["config"]["self_hosted_data_folder_bytes_by_table"];
    for table in [
        "wal_files",
        "records",
        "subject_keys",
        "subject_records",
        "audit",
    ] {
        assert!(by_table[table].is_u64(), "{table}: {by_table}");
    }
    assert!(by_table["records"].as_u64().unwrap() > 0, "{by_table}");
    // get and all against each baseline (a 95/5 mix this short may do no put).
    assert!(json["ratios"].as_array().unwrap().len() >= 6);

    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    // A throughput panel per target, and the latency plot.
    assert_eq!(html.matches("<svg").count(), 5);
    assert_eq!(html.matches("</svg>").count(), 5);
    assert!(html.contains("<polyline"));
    assert!(html.contains("Every repeat, ops/s: vault "), "{html}");
}

/// A run whose operations fail says so and exits non-zero: here a token
/// that may create the collection and write the records, but not read.
#[tokio::test]
async fn a_run_with_failed_operations_says_so_and_exits_non_zero() {
    use vault_server::policy::{Principal, Role};
    use vault_server::service::Authenticator;
    let data = tempfile::tempdir().unwrap();
    let mut auth = Authenticator::new();
    auth.add_token(
        "writer-only",
        Principal {
            name: "loader".into(),
            roles: vec![Role::Admin, Role::Writer],
        },
    );
    let vault = vault_tests::TestVault::start_dev_with_tokens(data.path(), "eu", auth)
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(bench_binary())
        .args(["--workload", "get-only", "--count", "20", "--clients", "2"])
        .args(["--records", "5", "--quiet", "--addr", &vault.url()])
        .args(["--token", "writer-only", "--out"])
        .arg(out.path())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("FAILED: vault: 20 operations failed"),
        "{stderr}"
    );
    assert!(stderr.contains("not a valid measurement"), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("result.json")).unwrap()).unwrap();
    assert_eq!(json["runs"][0]["errors"], 20);
    vault.stop().await;
}

#[tokio::test]
async fn help_documents_every_option_and_bad_options_are_refused() {
    let help = Command::new(bench_binary())
        .arg("--help")
        .output()
        .await
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for option in [
        "--addr",
        "--token",
        "--purpose",
        "--clients",
        "--duration",
        "--count",
        "--workload",
        "--fields",
        "--value-size",
        "--records",
        "--batch-size",
        "--baselines",
        "--postgres",
        "--unsynced",
        "--out",
        "--quiet",
        "--repeat",
    ] {
        assert!(text.contains(option), "{option} missing from --help");
    }
    for (args, why) in [
        (vec!["--clients", "0"], "--clients"),
        (vec!["--repeat", "0"], "--repeat"),
        (vec!["--repeat", "21"], "--repeat"),
        (vec!["--duration", "1e30"], "--duration"),
        (vec!["--unsynced", "--postgres"], "--postgres"),
        (vec!["--value-size", "70000"], "64 KiB"),
        (vec!["--batch-size", "501"], "--batch-size"),
        (vec!["--addr", "http://127.0.0.1:1"], "--token"),
    ] {
        let out = Command::new(bench_binary())
            .args(&args)
            .env_remove("VAULT_TOKEN")
            .env_remove("VAULT_ADDR")
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(why),
            "{args:?}"
        );
    }
}
