//! The monitor through real sockets: a read budget, a lockout and its
//! expiry (on a clock the test moves), a custodian lifting a lockout, and
//! alerts reaching a `Watch` subscriber within a second and the audit log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vault_client::{Error, VaultClient};
use vault_server::monitor::{
    Clock, LockoutOptions, ManualClock, Monitor, MonitorOptions, OnCritical,
};
use vault_server::policy::{Policy, PolicyHandle, Principal};
use vault_server::service::Authenticator;
use vault_server::vault::OpenOptions;
use vault_tests::TestVault;

use crate::user;

const POLICY: &str = r#"
[principals]
"owner" = ["owner"]
"loader" = ["loader"]
"svc" = ["support"]
"watcher" = ["watcher"]
"keeper" = ["keeper"]
"dpo" = ["dpo"]

[[roles.dpo.rules]]
operations = ["export"]
purposes = ["*"]

[[roles.loader.rules]]
operations = ["write", "read"]
purposes = ["*"]

[[roles.support.rules]]
collections = ["users"]
operations = ["read"]
purposes = ["support"]

[[roles.watcher.rules]]
operations = ["audit"]

[[roles.keeper.rules]]
operations = ["custody"]

[[roles.owner.rules]]
operations = ["admin"]

[[budgets]]
principal = "svc"
purpose = "support"
window_seconds = 60
records = 3
"#;

struct Setup {
    vault: TestVault,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    setup_with(OnCritical::Alert).await
}

async fn setup_with(on_critical: OnCritical) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), on_critical);
    let vault = TestVault::start_dev_with_auth(opts.0, auth())
        .await
        .unwrap();
    Setup {
        vault,
        clock: opts.1,
        _dir: dir,
    }
}

fn auth() -> Authenticator {
    let mut auth = Authenticator::new();
    for name in ["loader", "svc", "watcher", "keeper", "owner", "dpo"] {
        auth.add_token(
            &format!("t-{name}"),
            Principal {
                name: name.into(),
                roles: Vec::new(),
            },
        );
    }
    auth
}

fn options(dir: &std::path::Path, on_critical: OnCritical) -> (OpenOptions, Arc<ManualClock>) {
    let mut opts = OpenOptions::dev(&dir.join("data"), "eu".parse().unwrap());
    opts.engine.policy = Arc::new(PolicyHandle::new(
        Policy::parse(POLICY, "monitor test").unwrap(),
        None,
    ));
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    opts.engine.monitor = Arc::new(Monitor::new(
        MonitorOptions {
            lockout: LockoutOptions {
                after_denials: 3,
                window: Duration::from_secs(60),
                duration: Duration::from_secs(300),
            },
            on_critical,
        },
        Arc::clone(&clock) as Arc<dyn Clock>,
    ));
    (opts, clock)
}

async fn client(s: &Setup, name: &str, purpose: Option<&str>) -> VaultClient {
    let mut b = s.vault.client_builder().token(format!("t-{name}"));
    if let Some(p) = purpose {
        b = b.purpose(p);
    }
    b.connect().await.unwrap()
}

/// The next alert, which must come within a second of `since`.
async fn alert_within_a_second(
    alerts: &mut vault_client::AlertStream,
    since: Instant,
) -> vault_client::Alert {
    let left = Duration::from_secs(1).saturating_sub(since.elapsed());
    tokio::time::timeout(left, alerts.next())
        .await
        .expect("no alert within a second of its cause")
        .unwrap()
        .expect("the alert stream ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_and_lockouts_act_at_once_and_alert_watchers_and_the_log() {
    let s = setup().await;
    let loader = client(&s, "loader", Some("import")).await;
    for i in 1..=5 {
        loader
            .put(&user(&format!("u{i}"), &format!("s{i}")))
            .await
            .unwrap();
    }
    let watcher = client(&s, "watcher", None).await;
    let mut alerts = watcher.watch_alerts().await.unwrap();
    let svc = client(&s, "svc", Some("support")).await;

    // Three records a minute: the fourth read is refused, nothing of it
    // returned, and the watcher hears of it within a second.
    for id in ["u1", "u2", "u3"] {
        assert_eq!(svc.get("users", id).await.unwrap().id, id);
    }
    let refused_at = Instant::now();
    let e = svc.get("users", "u4").await.unwrap_err();
    assert!(
        matches!(&e, Error::OverBudget(m) if m.contains("3 records per 60 s") && !m.contains("4")),
        "{e}"
    );
    let alert = alert_within_a_second(&mut alerts, refused_at).await;
    assert_eq!(alert.kind, "budget_exceeded");
    assert_eq!(alert.severity, "warning");
    assert_eq!(alert.principal, "svc");
    assert_eq!(alert.purpose.as_deref(), Some("support"));
    // A used-up budget refuses every read, even of an id that does not
    // exist (no existence oracle).
    let e = svc.get("users", "nobody").await.unwrap_err();
    assert!(matches!(e, Error::OverBudget(_)), "{e}");
    // Once the minute has passed, reads are served again; a batch counts
    // every record it returns: two singles and a batch of two make four.
    s.clock.advance(Duration::from_secs(61));
    svc.get("users", "u1").await.unwrap();
    svc.get("users", "u2").await.unwrap();
    let refused_at = Instant::now();
    let e = svc.get_many("users", &["u4", "u5"], &[]).await.unwrap_err();
    assert!(matches!(e, Error::OverBudget(_)), "{e}");
    assert_eq!(
        alert_within_a_second(&mut alerts, refused_at).await.kind,
        "budget_exceeded"
    );
    s.clock.advance(Duration::from_secs(61));
    let batch = svc.get_many("users", &["u4", "u5"], &[]).await.unwrap();
    assert_eq!(batch.records.len(), 2);

    // Three denials within a minute lock the principal out, for every
    // request, until the lockout ends.
    let nosy = client(&s, "svc", Some("marketing")).await;
    for _ in 0..3 {
        let e = nosy.get("users", "u1").await.unwrap_err();
        assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
    }
    let locked_at = Instant::now();
    let alert = alert_within_a_second(&mut alerts, locked_at).await;
    assert_eq!(
        (alert.kind.as_str(), alert.principal.as_str()),
        ("lockout", "svc")
    );
    let e = svc.get("users", "u1").await.unwrap_err();
    assert!(
        matches!(&e, Error::PermissionDenied(m) if m.contains("locked out")),
        "{e}"
    );
    s.clock.advance(Duration::from_secs(301));
    svc.get("users", "u1").await.unwrap();

    // Locked out again; a custodian lifts it.
    for _ in 0..3 {
        nosy.get("users", "u1").await.unwrap_err();
    }
    assert_eq!(
        alert_within_a_second(&mut alerts, Instant::now())
            .await
            .kind,
        "lockout"
    );
    assert!(svc.get("users", "u2").await.is_err());
    let keeper = client(&s, "keeper", None).await;
    assert!(keeper.unlock("svc").await.unwrap());
    assert!(!keeper.unlock("svc").await.unwrap());
    svc.get("users", "u2").await.unwrap();
    // Lifting is custody: a reader may not.
    let e = loader.unlock("svc").await.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(_)), "{e}");

    // Every alert is an event of the signed log, and so are the refusals.
    let mut follow = watcher.audit_follow(0).await.unwrap();
    let mut alert_kinds = Vec::new();
    let mut refused = 0;
    let mut unlocks = 0;
    let mut locked_out = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while alert_kinds.len() < 4 || refused < 3 || locked_out < 2 || unlocks < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let page = tokio::time::timeout(left, follow.next())
            .await
            .expect("the alert events did not reach the log")
            .unwrap()
            .unwrap();
        for raw in page.events {
            let ev: serde_json::Value = serde_json::from_slice(&raw).unwrap();
            match ev["operation"].as_str().unwrap() {
                "alert" => {
                    let detail: serde_json::Value =
                        serde_json::from_str(ev["detail"].as_str().unwrap()).unwrap();
                    assert_eq!(ev["principal"], "svc");
                    alert_kinds.push(detail["kind"].as_str().unwrap().to_owned());
                }
                "read" if ev["reason"] == "budget exceeded" => {
                    assert_eq!(ev["decision"], "denied");
                    assert_eq!(ev["bytes"], 0);
                    refused += 1;
                }
                "unlock" => unlocks += 1,
                _ if ev["reason"] == "locked out" => {
                    assert_eq!(ev["decision"], "denied");
                    locked_out += 1;
                }
                _ => {}
            }
        }
    }
    assert_eq!(
        alert_kinds,
        ["budget_exceeded", "budget_exceeded", "lockout", "lockout"]
    );
    assert_eq!(refused, 3);
    assert_eq!(unlocks, 3);
    // The refusals of a locked-out principal say so in the log.
    assert_eq!(locked_out, 2);
    s.vault.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vaultctl_watches_alerts_and_lifts_a_lockout() {
    use tokio::io::{AsyncBufReadExt as _, BufReader};

    let s = setup().await;
    let mut watch = tokio::process::Command::new(vault_tests::vaultctl_binary())
        .args(["--json", "alerts", "watch"])
        .env("VAULT_ADDR", s.vault.url())
        .env("VAULT_TOKEN", "t-watcher")
        .env_remove("VAULT_PURPOSE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut stderr = BufReader::new(watch.stderr.take().unwrap()).lines();
    // Once it says so, it is subscribed.
    let ready = tokio::time::timeout(Duration::from_secs(30), stderr.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ready.as_deref(), Some("watching alerts; Ctrl-C to stop"));

    let nosy = client(&s, "svc", Some("marketing")).await;
    for _ in 0..3 {
        nosy.get("users", "nobody").await.unwrap_err();
    }
    let line = tokio::time::timeout(Duration::from_secs(5), stdout.next_line())
        .await
        .expect("vaultctl printed no alert")
        .unwrap()
        .unwrap();
    let alert: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(alert["kind"], "lockout");
    assert_eq!(alert["principal"], "svc");
    assert_eq!(alert["severity"], "warning");
    assert_eq!(alert["missed"], 0);
    watch.kill().await.unwrap();

    let url = s.vault.url();
    let run =
        crate::vaultctl::vaultctl_at(&url, Some("t-keeper"), &["operator", "unlock", "svc"], None)
            .await;
    assert_eq!(run.ok(), "lockout of svc lifted\n");
    let run = crate::vaultctl::vaultctl_at(
        &url,
        Some("t-keeper"),
        &["--json", "operator", "unlock", "svc"],
        None,
    )
    .await;
    assert_eq!(
        run.json(),
        serde_json::json!({"principal": "svc", "was_locked": false})
    );
    // Only custodians lift lockouts; the watcher is refused (exit 1).
    let run = crate::vaultctl::vaultctl_at(
        &url,
        Some("t-watcher"),
        &["operator", "unlock", "svc"],
        None,
    )
    .await;
    assert!(run.error(1).contains("permission denied"), "{run:?}");
    s.vault.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_honey_record_is_a_critical_alert_even_after_a_restart() {
    let s = setup().await;
    let owner = client(&s, "owner", None).await;
    let honey = owner.create_honey("users", 3).await.unwrap();
    assert_eq!(honey.len(), 3);
    // The decoys are written as the internal principal `honey`: an auditor
    // reading the log can tell them apart (and the planting is recorded).
    let events = s.vault.vault.audit_log().events(0, 10_000).unwrap();
    let by = |principal: &str, operation: &str| {
        events.iter().any(|raw| {
            let ev: serde_json::Value = serde_json::from_slice(raw).unwrap();
            ev["principal"] == principal && ev["operation"] == operation
        })
    };
    assert!(by("honey", "write"));
    assert!(by("owner", "honey_create"));
    // Planting is admin work: a reader may not, and counts are bounded.
    let loader = client(&s, "loader", Some("import")).await;
    let e = loader.create_honey("users", 1).await.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
    for bad in [0, 101] {
        let e = owner.create_honey("users", bad).await.unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{bad}: {e}");
    }
    let e = owner.create_honey("nope", 1).await.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    loader.put(&user("real", "s-real")).await.unwrap();

    let watcher = client(&s, "watcher", None).await;
    let mut alerts = watcher.watch_alerts().await.unwrap();
    let svc = client(&s, "svc", Some("support")).await;
    // A real record raises nothing; a decoy is served (it is worthless)
    // and raises a critical alert within a second.
    svc.get("users", "real").await.unwrap();
    let read_at = Instant::now();
    let decoy = svc.get("users", &honey[0]).await.unwrap();
    assert_eq!(
        decoy.fields.len(),
        5,
        "every field of the schema has a value"
    );
    let alert = alert_within_a_second(&mut alerts, read_at).await;
    assert_eq!(
        (
            alert.kind.as_str(),
            alert.severity.as_str(),
            alert.principal.as_str()
        ),
        ("honey_read", "critical", "svc")
    );
    assert!(
        alert.message.contains("1 honey record"),
        "{}",
        alert.message
    );
    // A batch that hits one counts it.
    s.clock.advance(Duration::from_secs(61));
    let read_at = Instant::now();
    svc.get_many("users", &["real", &honey[1]], &[])
        .await
        .unwrap();
    let alert = alert_within_a_second(&mut alerts, read_at).await;
    assert_eq!(alert.kind, "honey_read");
    // Exporting a decoy's subject raises it too.
    s.clock.advance(Duration::from_secs(61));
    let dpo = client(&s, "dpo", Some("data-subject-request")).await;
    let read_at = Instant::now();
    dpo.export_subject(&decoy.subject_id)
        .await
        .unwrap()
        .read_all()
        .await
        .unwrap();
    let alert = alert_within_a_second(&mut alerts, read_at).await;
    assert_eq!(
        (alert.kind.as_str(), alert.principal.as_str()),
        ("honey_read", "dpo")
    );
    drop(alerts);

    // The vault remembers its honey across a restart.
    let data_dir = s.vault.data_dir.clone();
    s.vault.stop().await;
    let (opts, _) = options(data_dir.parent().unwrap(), OnCritical::Alert);
    let again = TestVault::start_dev_with_auth(opts, auth()).await.unwrap();
    let watcher = again
        .client_builder()
        .token("t-watcher")
        .connect()
        .await
        .unwrap();
    let mut alerts = watcher.watch_alerts().await.unwrap();
    let svc = again
        .client_builder()
        .token("t-svc")
        .purpose("support")
        .connect()
        .await
        .unwrap();
    let read_at = Instant::now();
    svc.get("users", &honey[2]).await.unwrap();
    assert_eq!(
        alert_within_a_second(&mut alerts, read_at).await.kind,
        "honey_read"
    );
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_alert_seals_the_vault_when_configured_to() {
    let s = setup_with(OnCritical::Seal).await;
    let owner = client(&s, "owner", None).await;
    let honey = owner.create_honey("users", 1).await.unwrap();
    let mut sealed = s.vault.vault.watch_sealed();
    assert!(!*sealed.borrow_and_update());
    // A budget or lockout alert is a warning: no seal.
    let nosy = client(&s, "svc", Some("marketing")).await;
    for _ in 0..3 {
        nosy.get("users", "x").await.unwrap_err();
    }
    let svc = client(&s, "svc", Some("support")).await;
    let keeper = client(&s, "keeper", None).await;
    assert!(keeper.unlock("svc").await.unwrap());
    // Custody stays open to a locked-out principal: a custodian locked out
    // by its own denied data calls still reaches custody, and can lift it.
    let keeper_reading = client(&s, "keeper", Some("curious")).await;
    for _ in 0..3 {
        keeper_reading.get("users", "x").await.unwrap_err();
    }
    let e = keeper_reading.get("users", "x").await.unwrap_err();
    assert!(
        matches!(&e, Error::PermissionDenied(m) if m.contains("locked out")),
        "{e}"
    );
    assert!(!keeper.status().await.unwrap().sealed);
    assert!(keeper.unlock("keeper").await.unwrap());
    assert!(!*s.vault.vault.watch_sealed().borrow());
    // The decoy read seals the vault at once: the next data call is refused.
    svc.get("users", &honey[0]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), sealed.wait_for(|s| *s))
        .await
        .expect("the vault did not seal on a critical alert")
        .unwrap();
    let e = svc.get("users", &honey[0]).await.unwrap_err();
    assert!(e.is_sealed(), "{e}");
    // The seal is in the log, by the monitor (written just after the
    // vault turned sealed: waited for as the log grows).
    let log = s.vault.vault.audit_log();
    let mut grown = log.watch_size();
    let sealed_by_monitor = |raw: &Vec<u8>| {
        let ev: serde_json::Value = serde_json::from_slice(raw).unwrap();
        ev["operation"] == "seal" && ev["principal"] == "monitor" && ev["decision"] == "allowed"
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            grown.borrow_and_update();
            if log.events(0, 10_000).unwrap().iter().any(sealed_by_monitor) {
                return;
            }
            grown.changed().await.unwrap();
        }
    })
    .await
    .expect("no seal event by the monitor");
    s.vault.stop().await;
}

/// `GET /metrics` over a plain socket: (status line, body).
async fn scrape(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: vault\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of the sample `name` with exactly these labels (0 if absent).
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| {
            labels.len() == s.labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .next()
        .unwrap_or(0.0)
}

fn parse(body: &str) -> prometheus_parse::Scrape {
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_the_requests_made() {
    let s = setup().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_at = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(vault_server::service::serve_metrics(
        listener,
        Arc::clone(&s.vault.vault),
        async {
            let _ = stopped.await;
        },
    ));
    let (status, before) = scrape(metrics_at, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let before = parse(&before);

    let loader = client(&s, "loader", Some("import")).await;
    for i in 1..=3 {
        loader
            .put(&user(&format!("m{i}"), &format!("ms{i}")))
            .await
            .unwrap();
    }
    let svc = client(&s, "svc", Some("support")).await;
    svc.get("users", "m1").await.unwrap();
    svc.get_many("users", &["m2", "m3"], &[]).await.unwrap();
    let nosy = client(&s, "svc", Some("marketing")).await;
    nosy.get("users", "m1").await.unwrap_err();
    let e = svc.get("users", "m1").await.unwrap_err();
    assert!(matches!(e, Error::OverBudget(_)), "{e}");

    let log = s.vault.vault.audit_log();
    let size_before = log.size() as f64;
    let (_, body) = scrape(metrics_at, "/metrics").await;
    let size_after = log.size() as f64;
    let after = parse(&body);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    let get = "vault.v1.VaultService/GetRecord";
    assert_eq!(
        delta("vault_requests_total", &[("method", get), ("code", "0")]),
        1.0,
        "{body}"
    );
    assert_eq!(
        delta("vault_requests_total", &[("method", get), ("code", "7")]),
        1.0,
        "{body}"
    );
    assert_eq!(
        delta("vault_requests_total", &[("method", get), ("code", "8")]),
        1.0,
        "{body}"
    );
    assert_eq!(
        delta(
            "vault_requests_total",
            &[("method", "vault.v1.VaultService/PutRecord"), ("code", "0")]
        ),
        3.0,
        "{body}"
    );
    let flow = [
        ("principal", "svc"),
        ("purpose", "support"),
        ("collection", "users"),
    ];
    assert_eq!(delta("vault_records_returned_total", &flow), 3.0, "{body}");
    assert!(delta("vault_bytes_returned_total", &flow) > 0.0, "{body}");
    let contact = [
        ("principal", "svc"),
        ("purpose", "support"),
        ("collection", "users"),
        ("category", "contact"),
    ];
    // email and phone of each of the three records.
    assert_eq!(
        delta("vault_fields_returned_total", &contact),
        6.0,
        "{body}"
    );
    assert_eq!(
        delta("vault_denials_total", &[("reason", "permission denied")]),
        1.0,
        "{body}"
    );
    assert_eq!(
        delta("vault_denials_total", &[("reason", "budget exceeded")]),
        1.0,
        "{body}"
    );
    assert_eq!(
        delta(
            "vault_alerts_total",
            &[("kind", "budget_exceeded"), ("severity", "warning")]
        ),
        1.0,
        "{body}"
    );
    // svc used its budget of 3 records for support within 60 s.
    let budget = [
        ("principal", "svc"),
        ("budget", "svc"),
        ("purpose", "support"),
        ("window_seconds", "60"),
        ("unit", "records"),
    ];
    assert_eq!(sample(&after, "vault_budget_used", &budget), 3.0, "{body}");
    assert_eq!(sample(&after, "vault_budget_limit", &budget), 3.0, "{body}");
    assert_eq!(sample(&before, "vault_budget_used", &budget), 0.0);
    // The window passes: the series goes (nothing is in use).
    s.clock.advance(Duration::from_secs(62));
    let (_, later) = scrape(metrics_at, "/metrics").await;
    assert!(!later.contains("vault_budget_used{"), "{later}");
    assert_eq!(sample(&after, "vault_sealed", &[]), 0.0, "{body}");
    assert_eq!(sample(&after, "vault_root_key_version", &[]), 1.0, "{body}");
    // The log's size when scraped (the alert's event may land meanwhile).
    let size = sample(&after, "vault_audit_tree_size", &[]);
    assert!(size_before <= size && size <= size_after, "{size}\n{body}");
    // No personal data: no record id, subject id or value is in the text.
    for secret in ["m1", "ms1", "@example.eu", "Ada"] {
        assert!(!body.contains(secret), "{secret} in the metrics");
    }
    // Only GET /metrics.
    assert!(scrape(metrics_at, "/other").await.0.contains("404"));
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    s.vault.stop().await;
}
