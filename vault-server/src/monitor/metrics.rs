//! The vault's metrics, in the Prometheus (OpenMetrics) text format, for a
//! listener of their own (`[metrics] listen`).
//!
//! Labels never hold personal data: methods, gRPC codes, principals (the
//! names of services and people's roles, from the configuration),
//! purposes, collections, data categories, alert kinds. Purposes are the
//! one label a caller chooses (any printable text a rule with `*` lets
//! through): past [`MAX_FLOWS`] distinct principal × purpose × collection
//! flows, new ones are counted under the purpose `(other)`, so a caller
//! cannot grow the metrics without bound.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Distinct principal × purpose × collection flows kept apart.
pub const MAX_FLOWS: usize = 1000;

type Labels = Vec<(&'static str, String)>;

/// Latency buckets: 0.25 ms to about 4 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

/// What the vault counts, and the registry that encodes it.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    records: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    fields: Family<Labels, Counter>,
    denials: Family<Labels, Counter>,
    alerts: Family<Labels, Counter>,
    /// Gauges set when the metrics are read.
    sealed: Gauge,
    audit_size: Gauge,
    checkpoint_age: Gauge,
    cosignature_age: Family<Labels, Gauge>,
    budget_used: Family<Labels, Gauge>,
    budget_limit: Family<Labels, Gauge>,
    lockouts: Gauge,
    root_version: Gauge,
    root_wraps: Family<Labels, Gauge>,
    rewrap_left: Gauge,
    flows: RwLock<Flows>,
    /// The request counters of each method, once looked up.
    methods: RwLock<HashMap<String, Arc<MethodHandles>>>,
    /// Held while the gauges are set and the text encoded.
    encoding: std::sync::Mutex<()>,
}

/// The purpose a flow past [`MAX_FLOWS`] is counted under.
const OTHER_PURPOSE: &str = "(other)";

/// The flows seen: principal → purpose → collection → counters, and how
/// many there are (besides those counted as `(other)`).
#[derive(Default)]
struct Flows {
    map: HashMap<String, HashMap<String, HashMap<String, Arc<FlowHandles>>>>,
    count: usize,
    /// Flows past the bound kept under their own name (each the handles
    /// of its `(other)` flow).
    aliases: usize,
}

impl Flows {
    fn insert(&mut self, principal: &str, purpose: &str, collection: &str, f: Arc<FlowHandles>) {
        self.map
            .entry(principal.to_owned())
            .or_default()
            .entry(purpose.to_owned())
            .or_default()
            .insert(collection.to_owned(), f);
    }
}

/// The counter kept under `key` in `list`, found with the read lock; the
/// first time, made by `make` (a handle into its family) and kept.
fn cached<K: std::borrow::Borrow<str>>(
    list: &RwLock<Vec<(K, Counter)>>,
    key: &str,
    make: impl FnOnce() -> (K, Counter),
) -> Counter {
    let found = {
        let list = list.read().unwrap_or_else(|p| p.into_inner());
        list.iter()
            .find(|(k, _)| k.borrow() == key)
            .map(|(_, c)| c.clone())
    };
    found.unwrap_or_else(|| {
        let (k, counter) = make();
        let mut list = list.write().unwrap_or_else(|p| p.into_inner());
        if !list.iter().any(|(k, _)| k.borrow() == key) {
            list.push((k, counter.clone()));
        }
        counter
    })
}

/// Flows past [`MAX_FLOWS`] remembered as aliases of their `(other)` flow.
const MAX_ALIASES: usize = 10_000;

/// One flow's counters (handles into the families), and its labels.
struct FlowHandles {
    labels: Labels,
    records: Counter,
    bytes: Counter,
    /// By data category.
    fields: RwLock<Vec<(&'static str, Counter)>>,
}

/// One method's latency histogram and its counters by gRPC code.
struct MethodHandles {
    latency: Histogram,
    codes: RwLock<Vec<(String, Counter)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The vault's state when metrics are read.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Sealed (or not initialised).
    pub sealed: bool,
    /// Events in the audit log.
    pub audit_size: u64,
    /// Seconds since the last stored checkpoint, if any.
    pub checkpoint_age_secs: Option<u64>,
    /// Each configured witness, and seconds since its last cosignature
    /// was taken, if one was since the server started.
    pub cosignature_age_secs: Vec<(String, Option<u64>)>,
    /// Each principal's use of each budget of the policy in force.
    pub budget_use: Vec<super::BudgetUse>,
    /// Principals locked out now.
    pub lockouts: u64,
    /// The current root key version (unsealed).
    pub root_version: Option<u32>,
    /// Keys wrapped per root key version (unsealed).
    pub root_wraps: Vec<(u32, u64)>,
    /// Subject keys the re-wrap job has still to do.
    pub rewrap_left: u64,
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Metrics {
    /// Empty metrics, registered.
    pub fn new() -> Self {
        let mut m = Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency),
            records: Family::default(),
            bytes: Family::default(),
            fields: Family::default(),
            denials: Family::default(),
            alerts: Family::default(),
            sealed: Gauge::default(),
            audit_size: Gauge::default(),
            checkpoint_age: Gauge::default(),
            cosignature_age: Family::default(),
            budget_used: Family::default(),
            budget_limit: Family::default(),
            lockouts: Gauge::default(),
            root_version: Gauge::default(),
            root_wraps: Family::default(),
            rewrap_left: Gauge::default(),
            flows: RwLock::new(Flows::default()),
            methods: RwLock::new(HashMap::new()),
            encoding: std::sync::Mutex::new(()),
            registry: Registry::with_prefix("vault"),
        };
        let registry = &mut m.registry;
        registry.register(
            "requests",
            "gRPC requests answered, by method and gRPC status code",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a gRPC request (to its response headers), by method",
            m.latency.clone(),
        );
        registry.register(
            "records_returned",
            "Records returned by reads, by principal, purpose and collection",
            m.records.clone(),
        );
        registry.register(
            "bytes_returned",
            "Plaintext bytes returned by reads, by principal, purpose and collection",
            m.bytes.clone(),
        );
        registry.register(
            "fields_returned",
            "Field values returned by reads, by principal, purpose, collection and data category",
            m.fields.clone(),
        );
        registry.register(
            "denials",
            "Requests refused, by reason (permission denied, locked out, budget exceeded, unauthenticated)",
            m.denials.clone(),
        );
        registry.register(
            "alerts",
            "Alerts raised by the monitor, by kind and severity (held-back warnings included)",
            m.alerts.clone(),
        );
        registry.register("sealed", "1 while the vault is sealed", m.sealed.clone());
        registry.register(
            "audit_tree_size",
            "Events in the audit log",
            m.audit_size.clone(),
        );
        registry.register(
            "audit_checkpoint_age_seconds",
            "Seconds since this server last signed a checkpoint of a new tree size (-1: none since it started)",
            m.checkpoint_age.clone(),
        );
        registry.register(
            "audit_witness_cosignature_age_seconds",
            "Seconds since this server last took a cosignature from each configured witness (-1: none since it started)",
            m.cosignature_age.clone(),
        );
        registry.register(
            "budget_used",
            "What a principal read within a budget's window now, by principal, the budget's principal (itself or *), purpose and window, and unit (records, bytes)",
            m.budget_used.clone(),
        );
        registry.register(
            "budget_limit",
            "The limit of that budget, with the same labels",
            m.budget_limit.clone(),
        );
        registry.register("lockouts", "Principals locked out now", m.lockouts.clone());
        registry.register(
            "root_key_version",
            "The current root key version (0 while sealed)",
            m.root_version.clone(),
        );
        registry.register(
            "root_key_wraps",
            "Subject keys wrapped under each root key version",
            m.root_wraps.clone(),
        );
        registry.register(
            "rewrap_remaining_keys",
            "Subject keys the root-key re-wrap job has still to re-wrap",
            m.rewrap_left.clone(),
        );
        m
    }

    /// A request answered with gRPC `code` after `seconds`. The counters
    /// of a method are looked up once, then found by name without
    /// allocating.
    pub fn request(&self, method: &str, code: &str, seconds: f64) {
        let handles = {
            let methods = self.methods.read().unwrap_or_else(|p| p.into_inner());
            methods.get(method).cloned()
        };
        let handles = handles.unwrap_or_else(|| {
            let mut methods = self.methods.write().unwrap_or_else(|p| p.into_inner());
            let latency = self
                .latency
                .get_or_create(&vec![("method", method.to_owned())])
                .clone();
            Arc::clone(methods.entry(method.to_owned()).or_insert_with(|| {
                Arc::new(MethodHandles {
                    latency,
                    codes: RwLock::new(Vec::new()),
                })
            }))
        });
        handles.latency.observe(seconds);
        cached(&handles.codes, code, || {
            let counter = self.requests.get_or_create(&vec![
                ("method", method.to_owned()),
                ("code", code.to_owned()),
            ]);
            (code.to_owned(), counter.clone())
        })
        .inc();
    }

    /// A request refused for `reason`.
    pub fn denied(&self, reason: &str) {
        self.denials
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// An alert raised.
    pub fn alert(&self, kind: &str, severity: &str) {
        self.alerts
            .get_or_create(&vec![
                ("kind", kind.to_owned()),
                ("severity", severity.to_owned()),
            ])
            .inc();
    }

    /// A read served: `records` records, `bytes` bytes of plaintext and
    /// the data category of each field value returned.
    pub fn read(
        &self,
        principal: &str,
        purpose: Option<&str>,
        collection: &str,
        records: u64,
        bytes: u64,
        categories: &[&'static str],
    ) {
        let flow = self.flow(principal, purpose.unwrap_or(""), collection);
        flow.records.inc_by(records);
        flow.bytes.inc_by(bytes);
        // One count per category, not per field.
        let mut counted: Vec<(&'static str, u64)> = Vec::new();
        for category in categories {
            match counted.iter_mut().find(|(c, _)| c == category) {
                Some((_, n)) => *n += 1,
                None => counted.push((category, 1)),
            }
        }
        for (category, n) in counted {
            cached(&flow.fields, category, || {
                let mut labels = flow.labels.clone();
                labels.push(("category", category.to_owned()));
                (category, self.fields.get_or_create(&labels).clone())
            })
            .inc_by(n);
        }
    }

    /// The counters of a flow, looked up by name without allocating once
    /// it exists. Past [`MAX_FLOWS`] flows, a new one is counted as the
    /// flow of its principal and collection with the purpose `(other)`.
    fn flow(&self, principal: &str, purpose: &str, collection: &str) -> Arc<FlowHandles> {
        let find = |flows: &Flows, purpose: &str| {
            flows
                .map
                .get(principal)
                .and_then(|p| p.get(purpose))
                .and_then(|c| c.get(collection))
                .cloned()
        };
        {
            let flows = self.flows.read().unwrap_or_else(|p| p.into_inner());
            if let Some(flow) = find(&flows, purpose) {
                return flow;
            }
        }
        let mut flows = self.flows.write().unwrap_or_else(|p| p.into_inner());
        if let Some(flow) = find(&flows, purpose) {
            return flow;
        }
        if flows.count >= MAX_FLOWS {
            // Counted as `(other)`; remembered under its own name too (up
            // to a bound of its own) so that its next reads find it with
            // the read lock.
            let other = match find(&flows, OTHER_PURPOSE) {
                Some(other) => other,
                None => self.new_flow(&mut flows, principal, OTHER_PURPOSE, collection),
            };
            if flows.aliases < MAX_ALIASES {
                flows.aliases += 1;
                flows.insert(principal, purpose, collection, Arc::clone(&other));
            }
            return other;
        }
        flows.count += 1;
        self.new_flow(&mut flows, principal, purpose, collection)
    }

    /// A flow's counters, made and kept.
    fn new_flow(
        &self,
        flows: &mut Flows,
        principal: &str,
        purpose: &str,
        collection: &str,
    ) -> Arc<FlowHandles> {
        let labels = vec![
            ("principal", principal.to_owned()),
            ("purpose", purpose.to_owned()),
            ("collection", collection.to_owned()),
        ];
        let flow = Arc::new(FlowHandles {
            records: self.records.get_or_create(&labels).clone(),
            bytes: self.bytes.get_or_create(&labels).clone(),
            fields: RwLock::new(Vec::new()),
            labels,
        });
        flows.insert(principal, purpose, collection, Arc::clone(&flow));
        flow
    }

    /// The text of every metric, with the vault's state as of `now`.
    pub fn encode(&self, now: &Snapshot) -> String {
        // One scrape at a time: the gauges are set, then encoded.
        let _one_at_a_time = self.encoding.lock().unwrap_or_else(|p| p.into_inner());
        self.sealed.set(i64::from(now.sealed));
        self.audit_size.set(gauge(now.audit_size));
        self.checkpoint_age
            .set(now.checkpoint_age_secs.map_or(-1, gauge));
        for (witness, age) in &now.cosignature_age_secs {
            self.cosignature_age
                .get_or_create(&vec![("witness", witness.clone())])
                .set(age.map_or(-1, gauge));
        }
        // Only the budgets in use now: a window that emptied, or a budget
        // gone from the policy, leaves no stale series.
        self.budget_used.clear();
        self.budget_limit.clear();
        for u in &now.budget_use {
            for (unit, used, limit) in [
                ("records", u.records, u.records_limit),
                ("bytes", u.bytes, u.bytes_limit),
            ] {
                let Some(limit) = limit else { continue };
                let labels = vec![
                    ("principal", u.principal.clone()),
                    ("budget", u.budget_principal.clone()),
                    ("purpose", u.purpose.clone()),
                    ("window_seconds", u.window_secs.to_string()),
                    ("unit", unit.to_owned()),
                ];
                self.budget_used.get_or_create(&labels).set(gauge(used));
                self.budget_limit.get_or_create(&labels).set(gauge(limit));
            }
        }
        self.lockouts.set(gauge(now.lockouts));
        self.root_version.set(now.root_version.map_or(0, i64::from));
        for (version, wraps) in &now.root_wraps {
            self.root_wraps
                .get_or_create(&vec![("version", version.to_string())])
                .set(gauge(*wraps));
        }
        self.rewrap_left.set(gauge(now.rewrap_left));
        let mut out = String::new();
        // Writing to a String does not fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn counts_are_encoded_and_purposes_are_bounded() {
        let m = Metrics::new();
        m.request("vault.v1.VaultService/GetRecord", "0", 0.001);
        m.read(
            "svc",
            Some("support"),
            "users",
            2,
            40,
            &["contact", "identity"],
        );
        for i in 0..MAX_FLOWS + 5 {
            m.read("svc", Some(&format!("p{i}")), "users", 1, 1, &[]);
        }
        let text = m.encode(&Snapshot::default());
        assert!(
            text.contains(
                "vault_requests_total{method=\"vault.v1.VaultService/GetRecord\",code=\"0\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains(
            "vault_records_returned_total{principal=\"svc\",purpose=\"support\",collection=\"users\"} 2"
        ), "{text}");
        assert!(text.contains("category=\"contact\"} 1"), "{text}");
        // One flow was there first: 999 more fit, the last six are "(other)".
        assert!(text.contains(
            "vault_records_returned_total{principal=\"svc\",purpose=\"(other)\",collection=\"users\"} 6"
        ), "{text}");
        assert!(
            text.contains("vault_audit_checkpoint_age_seconds -1"),
            "{text}"
        );
        let text = m.encode(&Snapshot {
            cosignature_age_secs: vec![
                ("w.example/1".into(), Some(7)),
                ("w.example/2".into(), None),
            ],
            ..Snapshot::default()
        });
        for line in [
            "vault_audit_witness_cosignature_age_seconds{witness=\"w.example/1\"} 7",
            "vault_audit_witness_cosignature_age_seconds{witness=\"w.example/2\"} -1",
        ] {
            assert!(text.contains(line), "{text}");
        }
    }

    #[test]
    fn counts_from_many_threads_add_up_exactly() {
        let m = Metrics::new();
        // Fill the flows, so that the threads also take the `(other)` path
        // and its aliases.
        for i in 0..MAX_FLOWS {
            m.read("filler", Some(&format!("p{i}")), "c", 0, 0, &[]);
        }
        std::thread::scope(|scope| {
            for t in 0..4 {
                let m = &m;
                scope.spawn(move || {
                    for i in 0..500 {
                        let purpose = if i % 2 == 0 { "support" } else { "late" };
                        m.read(
                            &format!("svc{}", t % 2),
                            Some(purpose),
                            "users",
                            1,
                            10,
                            &["contact"],
                        );
                        m.request(
                            "vault.v1.VaultService/GetRecord",
                            if i % 5 == 0 { "7" } else { "0" },
                            0.001,
                        );
                    }
                });
            }
        });
        let text = m.encode(&Snapshot::default());
        for (principal, purpose, records) in
            [("svc0", "(other)", "1000"), ("svc1", "(other)", "1000")]
        {
            let line = format!(
                "vault_records_returned_total{{principal=\"{principal}\",purpose=\"{purpose}\",collection=\"users\"}} {records}"
            );
            assert!(text.contains(&line), "{line}\n{text}");
        }
        assert!(
            text.contains(
                "vault_requests_total{method=\"vault.v1.VaultService/GetRecord\",code=\"0\"} 1600"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "vault_requests_total{method=\"vault.v1.VaultService/GetRecord\",code=\"7\"} 400"
            ),
            "{text}"
        );
        assert!(text.contains(
            "vault_fields_returned_total{principal=\"svc0\",purpose=\"(other)\",collection=\"users\",category=\"contact\"} 1000"
        ), "{text}");
    }

    #[test]
    fn the_dashboard_and_the_docs_name_only_metrics_that_exist() {
        let m = Metrics::new();
        m.request("m", "0", 0.001);
        m.read("p", Some("q"), "c", 1, 1, &["contact"]);
        m.denied("permission denied");
        m.alert("lockout", "warning");
        let text = m.encode(&Snapshot {
            root_wraps: vec![(1, 1)],
            cosignature_age_secs: vec![("w".into(), Some(1))],
            budget_use: vec![crate::monitor::BudgetUse {
                principal: "p".into(),
                budget_principal: "*".into(),
                purpose: "*".into(),
                window_secs: 60,
                records: 1,
                bytes: 2,
                records_limit: Some(3),
                bytes_limit: None,
            }],
            ..Snapshot::default()
        });
        let exists = |name: &str| {
            text.lines()
                .any(|l| !l.starts_with('#') && l.starts_with(name))
        };
        for (doc, source) in [
            (
                "docs/grafana-dashboard.json",
                include_str!("../../../docs/grafana-dashboard.json"),
            ),
            (
                "docs/monitoring.md",
                include_str!("../../../docs/monitoring.md"),
            ),
        ] {
            let mut seen = 0;
            for (i, _) in source.match_indices("vault_") {
                let name: String = source[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                // Prometheus adds these to a histogram's name.
                let base = name.trim_end_matches("_bucket");
                assert!(
                    exists(base),
                    "{doc} names {name}, which the vault does not export"
                );
                seen += 1;
            }
            assert!(seen >= 10, "{doc}: {seen}");
        }
    }
}
