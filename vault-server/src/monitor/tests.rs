#![allow(clippy::unwrap_used)]

use super::*;
use crate::policy::{Policy, Principal};

const T0: u64 = 1_800_000_000_000;

fn caller(principal: &str, purpose: &str) -> Caller {
    Caller {
        principal: Principal {
            name: principal.into(),
            roles: Vec::new(),
        },
        purpose: Some(purpose.into()),
        internal: false,
        request_id: None,
    }
}

fn monitor(after_denials: u32) -> (Monitor, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let opts = MonitorOptions {
        lockout: LockoutOptions {
            after_denials,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(300),
        },
        on_critical: OnCritical::Alert,
    };
    (
        Monitor::new(opts, Arc::clone(&clock) as Arc<dyn Clock>),
        clock,
    )
}

fn budgets(text: &str) -> Vec<Budget> {
    let policy = Policy::parse(text, "test").unwrap();
    policy.budgets().to_vec()
}

const BUDGETS: &str = r#"
[[budgets]]
principal = "svc"
purpose = "support"
window_seconds = 60
records = 3

[[budgets]]
principal = "*"
window_seconds = 3600
bytes = 1000
"#;

#[test]
fn a_read_over_a_record_budget_is_refused_counts_nothing_and_alerts() {
    let (m, clock) = monitor(0);
    let mut alerts = m.subscribe();
    let b = budgets(BUDGETS);
    let svc = caller("svc", "support");
    m.charge(&b, &svc, 2, 10).unwrap();
    m.charge(&b, &svc, 1, 10).unwrap();
    let e = m.charge(&b, &svc, 1, 10).unwrap_err();
    // The caller is told the budget, not how many of its ids were found.
    assert!(
        matches!(&e, Error::BudgetExceeded(msg)
            if msg.starts_with("over the read budget")
                && msg.contains("(3 records per 60 s)")
                && !msg.contains("4 of")),
        "{e}"
    );
    let alert = alerts.try_recv().unwrap();
    assert_eq!(alert.kind, AlertKind::BudgetExceeded);
    assert_eq!(alert.severity, Severity::Warning);
    assert_eq!((alert.principal.as_str(), alert.seq), ("svc", 1));
    assert!(
        alert.message.contains("4 records of 3"),
        "{}",
        alert.message
    );
    assert_eq!(alert.purpose.as_deref(), Some("support"));
    assert_eq!(alert.time_ms, T0);
    // The refused read was not counted: the window holds 3, still full, and
    // a used-up budget refuses even a read that finds nothing. Warnings
    // like the last one within 10 s are held back and counted.
    assert!(m.charge(&b, &svc, 1, 0).is_err());
    assert!(m.check_budgets(&b, &svc).is_err());
    assert!(alerts.try_recv().is_err());
    clock.advance(Duration::from_secs(10));
    assert!(m.check_budgets(&b, &svc).is_err());
    let alert = alerts.try_recv().unwrap();
    assert!(
        alert.message.contains("(2 more like it held back"),
        "{}",
        alert.message
    );
    // Another purpose is not under the per-purpose budget.
    m.charge(&b, &caller("svc", "billing"), 5, 10).unwrap();
    // The window slides: after it, reads are served again.
    clock.advance(Duration::from_secs(51));
    m.check_budgets(&b, &svc).unwrap();
    m.charge(&b, &svc, 3, 10).unwrap();
}

#[test]
fn budgets_alike_share_one_count_and_others_count_apart() {
    let (m, _) = monitor(0);
    let b = budgets(
        r#"
[[budgets]]
principal = "svc"
window_seconds = 60
records = 4

[[budgets]]
principal = "svc"
window_seconds = 60
bytes = 1000

[[budgets]]
principal = "*"
window_seconds = 60
records = 10
"#,
    );
    let svc = caller("svc", "p");
    // Counted once for the two budgets alike, once for the `*` one.
    m.charge(&b, &svc, 2, 10).unwrap();
    m.charge(&b, &svc, 2, 10).unwrap();
    assert!(m.charge(&b, &svc, 1, 10).is_err());
    // Another principal has its own count under `*`.
    m.charge(&b, &caller("other", "p"), 10, 0).unwrap();
    // What the metrics show: one row per principal and budget count, the
    // two budgets alike with both limits, the `*` one apart.
    let row =
        |principal: &str, budget: &str, records, bytes, records_limit, bytes_limit| BudgetUse {
            principal: principal.into(),
            budget_principal: budget.into(),
            purpose: "*".into(),
            window_secs: 60,
            records,
            bytes,
            records_limit,
            bytes_limit,
        };
    assert_eq!(
        m.budget_use(&b),
        vec![
            row("other", "*", 10, 0, Some(10), None),
            row("svc", "*", 4, 20, Some(10), None),
            row("svc", "svc", 4, 20, Some(4), Some(1000)),
        ]
    );
}

#[test]
fn a_read_is_counted_for_the_whole_window_however_its_slot_falls() {
    let (m, clock) = monitor(0);
    let b = budgets(BUDGETS);
    let svc = caller("svc", "support");
    // At the end of a one-second slot, then just under 60 s later.
    clock.advance(Duration::from_millis(999));
    m.charge(&b, &svc, 3, 0).unwrap();
    clock.advance(Duration::from_millis(59_001));
    assert!(m.charge(&b, &svc, 1, 0).is_err());
    clock.advance(Duration::from_secs(1));
    m.charge(&b, &svc, 1, 0).unwrap();
}

#[test]
fn budgets_over_every_purpose_add_purposes_up_and_count_each_principal_apart() {
    let (m, _) = monitor(0);
    let b = budgets(BUDGETS);
    // 1000 bytes per hour for each principal, whatever the purpose.
    m.charge(&b, &caller("a", "p1"), 1, 600).unwrap();
    let e = m.charge(&b, &caller("a", "p2"), 1, 500).unwrap_err();
    assert!(e.to_string().contains("(1000 bytes per 3600 s)"), "{e}");
    m.charge(&b, &caller("b", "p1"), 1, 900).unwrap();
    // Internal callers are exempt in the engine, not here; callers no
    // budget applies to pass.
    let none = budgets("");
    m.charge(&none, &caller("a", "p1"), 1_000_000, u64::MAX)
        .unwrap();
}

#[test]
fn budget_windows_slide_slot_by_slot() {
    let (m, clock) = monitor(0);
    let b = budgets(BUDGETS);
    let svc = caller("svc", "support");
    m.charge(&b, &svc, 2, 0).unwrap();
    clock.advance(Duration::from_secs(30));
    m.charge(&b, &svc, 1, 0).unwrap();
    assert!(m.charge(&b, &svc, 1, 0).is_err());
    // The first two leave the 60 s window; the third is still in it.
    clock.advance(Duration::from_secs(31));
    m.charge(&b, &svc, 2, 0).unwrap();
    assert!(m.charge(&b, &svc, 1, 0).is_err());
}

#[test]
fn repeated_denials_lock_a_principal_out_until_it_expires_or_is_lifted() {
    let (m, clock) = monitor(3);
    let mut alerts = m.subscribe();
    m.denied("svc", Some("x"));
    m.denied("svc", Some("x"));
    m.check_locked("svc").unwrap();
    // Denials older than the window do not count.
    clock.advance(Duration::from_secs(61));
    m.denied("svc", None);
    m.denied("svc", None);
    m.check_locked("svc").unwrap();
    assert!(alerts.try_recv().is_err());
    m.denied("svc", None);
    let e = m.check_locked("svc").unwrap_err();
    assert!(
        matches!(&e, Error::PermissionDenied(msg) if msg.contains("locked out for 300 more seconds")),
        "{e}"
    );
    let alert = alerts.try_recv().unwrap();
    assert_eq!(
        (alert.kind, alert.principal.as_str()),
        (AlertKind::Lockout, "svc")
    );
    assert_eq!(m.lockouts(), vec![("svc".to_owned(), 300_000)]);
    // Refusals while locked out do not lengthen it, nor alert again.
    clock.advance(Duration::from_secs(200));
    for _ in 0..10 {
        m.denied("svc", None);
    }
    assert!(alerts.try_recv().is_err());
    // Others are not affected.
    m.check_locked("other").unwrap();
    clock.advance(Duration::from_secs(99));
    assert!(m.check_locked("svc").is_err());
    clock.advance(Duration::from_secs(1));
    m.check_locked("svc").unwrap();
    assert!(m.lockouts().is_empty());
    // Locked again, then lifted by a custodian.
    for _ in 0..3 {
        m.denied("svc", None);
    }
    assert!(m.check_locked("svc").is_err());
    assert!(m.lift("svc"));
    m.check_locked("svc").unwrap();
    assert!(!m.lift("svc"));
}

#[test]
fn zero_turns_lockout_off() {
    let (off, _) = monitor(0);
    for _ in 0..100 {
        off.denied("svc", None);
    }
    off.check_locked("svc").unwrap();
}

#[test]
fn a_monitor_serves_one_open_vault_at_a_time() {
    let open = |dir: &std::path::Path| {
        let store: Arc<dyn crate::storage::Store> = Arc::new(
            crate::storage::RocksStore::open(dir, &crate::storage::StoreOptions::default())
                .unwrap(),
        );
        Arc::new(AuditLog::open(store).unwrap())
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (m, _) = monitor(1);
    let first = open(a.path());
    m.attach(&first).unwrap();
    m.attach(&first).unwrap();
    let second = open(b.path());
    let e = m.attach(&second).unwrap_err();
    assert!(e.to_string().contains("another open vault"), "{e}");
    // Once the first is closed, the monitor may serve another.
    drop(first);
    m.attach(&second).unwrap();
    // Detaching writes what is queued and lets go of the log: its store
    // can be opened again at once.
    m.denied("svc", None);
    m.detach(&second);
    assert_eq!(second.size(), 1);
    let store = Arc::downgrade(&second);
    drop(second);
    assert!(store.upgrade().is_none());
    drop(open(b.path()));
}

#[test]
fn alerts_reach_the_audit_log_as_events() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn crate::storage::Store> = Arc::new(
        crate::storage::RocksStore::open(dir.path(), &crate::storage::StoreOptions::default())
            .unwrap(),
    );
    let log = Arc::new(AuditLog::open(store).unwrap());
    let (m, _) = monitor(1);
    m.attach(&log).unwrap();
    let mut grown = log.watch_size();
    m.denied("svc", Some("support"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), grown.wait_for(|&n| n >= 1))
            .await
            .unwrap()
            .unwrap();
    });
    let events = log.events(0, 10).unwrap();
    assert_eq!(events.len(), 1);
    let ev: Event = serde_json::from_slice(&events[0]).unwrap();
    assert_eq!(
        (
            ev.operation.as_str(),
            ev.principal.as_str(),
            ev.purpose.as_deref()
        ),
        ("alert", "svc", Some("support"))
    );
    let detail: serde_json::Value = serde_json::from_str(ev.detail.as_deref().unwrap()).unwrap();
    assert_eq!(detail["kind"], "lockout");
    assert_eq!(detail["severity"], "warning");
    assert_eq!(detail["seq"], 1);
}

#[test]
fn budgets_in_policy_files_are_checked() {
    let parsed = budgets(BUDGETS);
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[1].purpose, "*");
    assert_eq!(parsed[0].line, 2);
    for (text, expected) in [
        (
            "[[budgets]]\nprincipal = \"a\"\nwindow_seconds = 60\n",
            "needs records, bytes or both",
        ),
        (
            "[[budgets]]\nprincipal = \"a\"\nwindow_seconds = 0\nrecords = 1\n",
            "window_seconds must be",
        ),
        (
            "[[budgets]]\nprincipal = \"a\"\nwindow_seconds = 2592001\nrecords = 1\n",
            "window_seconds must be",
        ),
        (
            "[[budgets]]\nprincipal = \"a\"\nwindow_seconds = 60\nrecords = 0\n",
            "a budget of 0",
        ),
        (
            "[[budgets]]\nprincipal = \" \"\nwindow_seconds = 60\nrecords = 1\n",
            "principal",
        ),
        (
            "[[budgets]]\nprincipal = \"a\"\npurpose = \" x\"\nwindow_seconds = 60\nrecords = 1\n",
            "can never be stated",
        ),
        (
            "[[budgets]]\nprincipal = \"a\"\nwindow_seconds = 60\nrecords = 1\nrows = 2\n",
            "unknown field",
        ),
        (
            "[[budgets]]\nwindow_seconds = 60\nrecords = 1\n",
            "missing field",
        ),
        (
            "[[budgets]]\nprincipal = \"a\"\nwindow_seconds = -1\nrecords = 1\n",
            "line 3",
        ),
    ] {
        let e = Policy::parse(text, "test").unwrap_err();
        assert!(e.contains(expected), "{text:?}: {e}");
    }
}
