//! What the monitor adds to each request, in process, with criterion: the
//! metrics of one answered request and of one read served (a record of
//! five fields in four data categories), and a budget check when no budget
//! applies. The load generator measures the same end to end
//! (docs/capacity.md, "What the monitor costs"); this isolates the
//! monitor's own work, which is below the noise of a loaded machine.
//!
//! Run: `cargo bench --locked --workspace --bench monitor`

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use vault_server::monitor::metrics::Metrics;
use vault_server::monitor::Monitor;
use vault_server::policy::{Caller, Principal};

fn monitor(c: &mut Criterion) {
    let metrics = Metrics::new();
    let categories = ["contact", "identity", "contact", "demographic", "location"];
    let mut group = c.benchmark_group("monitor");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("request_metrics", |b| {
        b.iter(|| {
            metrics.request(
                black_box("vault.v1.VaultService/GetRecord"),
                black_box("0"),
                0.000_4,
            );
        });
    });
    group.bench_function("read_metrics", |b| {
        b.iter(|| {
            metrics.read(
                black_box("spiffe://eu.example/support"),
                Some(black_box("support-ticket")),
                black_box("users"),
                1,
                120,
                &categories,
            );
        });
    });
    let monitor = Monitor::default();
    let caller = Caller {
        principal: Principal {
            name: "spiffe://eu.example/support".into(),
            roles: Vec::new(),
        },
        purpose: Some("support-ticket".into()),
        internal: false,
        request_id: None,
    };
    group.bench_function("budget_check_none_applies", |b| {
        b.iter(|| monitor.charge(black_box(&[]), &caller, 1, 120).unwrap());
    });
    group.finish();
}

criterion_group!(benches, monitor);
criterion_main!(benches);
