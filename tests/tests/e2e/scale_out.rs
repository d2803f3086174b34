//! Several vault servers over one PostgreSQL database (the PostgreSQL run
//! of `scripts/test`): writes through one are read through another,
//! collections and keyring changes made through one reach the other, the
//! background jobs run on one server and go on on another when it stops,
//! and the audit log they all append to exports and verifies as one tree.

use std::time::{Duration, Instant};

use vault_client::UnsealShare;
use vault_server::engine::RewrapOptions;
use vault_server::service::Authenticator;
use vault_server::storage::PgOptions;
use vault_server::vault::OpenOptions;
use vault_tests::{TestVault, CUSTODIAN_TOKEN, TOKEN};

use crate::user;

/// Both dev tokens, as a dev-mode vault has them.
fn dev_auth() -> Authenticator {
    let mut auth = Authenticator::new();
    auth.add_token(TOKEN, vault_server::dev::dev_principal());
    auth.add_token(CUSTODIAN_TOKEN, vault_server::dev::dev_custodian());
    auth
}

/// Options of a server over `dir` whose data is in the database `url`,
/// re-wrapping `per_second` keys a second, one at a time.
fn options(dir: &std::path::Path, url: &str, per_second: u64) -> OpenOptions {
    let mut opts = OpenOptions::dev(dir, "eu".parse().unwrap());
    opts.postgres = Some(PgOptions::new(url));
    opts.engine.rewrap = RewrapOptions {
        batch_size: 1,
        keys_per_second: per_second,
    };
    opts
}

/// A first server (it initialises the vault in dev mode) and a second one
/// over the same database, unsealed by a custodian with the same share.
async fn pair(
    a_dir: &std::path::Path,
    b_dir: &std::path::Path,
    per_second: u64,
) -> (TestVault, TestVault) {
    pair_with(a_dir, b_dir, per_second, |_| {}).await
}

/// [`pair`], each server's options changed by `set` first.
async fn pair_with(
    a_dir: &std::path::Path,
    b_dir: &std::path::Path,
    per_second: u64,
    set: impl Fn(&mut OpenOptions),
) -> (TestVault, TestVault) {
    let url = vault_tests::postgres_database_for(a_dir).await;
    let (mut a_opts, mut b_opts) = (
        options(a_dir, &url, per_second),
        options(b_dir, &url, per_second),
    );
    set(&mut a_opts);
    set(&mut b_opts);
    let a = TestVault::start_dev_with(a_opts).await.unwrap();
    let b = TestVault::start_sealed(b_opts, dev_auth()).await.unwrap();
    let share = std::fs::read_to_string(a_dir.join(vault_server::vault::DEV_SHARE_FILE)).unwrap();
    let progress = b
        .custodian()
        .await
        .unseal(&UnsealShare::new(share))
        .await
        .unwrap();
    assert!(!progress.sealed);
    (a, b)
}

/// Polls `done` every 50 ms until it holds, for at most `limit`.
async fn within<F, Fut>(limit: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_database_read_each_others_writes_and_keep_one_audit_tree() {
    if vault_tests::skip_without_postgres() {
        return;
    }
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = pair(a_dir.path(), b_dir.path(), 0).await;
    let (ca, cb) = (a.client().await, b.client().await);

    // Writes through one, reads through the other, both ways, and
    // concurrently (two servers appending to one audit log).
    ca.put(&user("u1", "alice")).await.unwrap();
    assert_eq!(cb.get("users", "u1").await.unwrap(), user("u1", "alice"));
    cb.put(&user("u2", "bob")).await.unwrap();
    assert_eq!(ca.get("users", "u2").await.unwrap(), user("u2", "bob"));
    let mut writes = Vec::new();
    for i in 0..40 {
        let c = if i % 2 == 0 { ca.clone() } else { cb.clone() };
        writes.push(tokio::spawn(async move {
            // Many new subjects: each server makes subject keys.
            c.put(&user(&format!("c{i}"), &format!("s{}", i % 7)))
                .await
                .unwrap();
        }));
    }
    for w in writes {
        w.await.unwrap();
    }
    for i in 0..40 {
        let id = format!("c{i}");
        let expected = user(&id, &format!("s{}", i % 7));
        assert_eq!(ca.get("users", &id).await.unwrap(), expected);
        assert_eq!(cb.get("users", &id).await.unwrap(), expected);
    }
    // A delete through one is a delete for the other.
    assert!(cb.delete("users", "u1").await.unwrap());
    assert!(matches!(
        ca.get("users", "u1").await,
        Err(vault_client::Error::NotFound(_))
    ));

    // A collection made through one is known to the other, and a record
    // written through either is found (blind index) through the other.
    // Created through both at once: one of them succeeds.
    let people = crate::search::people();
    let (x, y) = tokio::join!(ca.create_collection(&people), cb.create_collection(&people));
    match (x, y) {
        (Ok(_), Err(vault_client::Error::AlreadyExists(_)))
        | (Err(vault_client::Error::AlreadyExists(_)), Ok(_)) => {}
        other => panic!("two creations of one collection: {other:?}"),
    }
    ca.put(&crate::search::person("p1", "carol", "carol@example.eu", 7))
        .await
        .unwrap();
    let found = cb
        .find("people", "email", "carol@example.eu", &[], 10)
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].id, "p1");

    // A root-key rotation through one reaches the other: new subjects
    // written through the other are wrapped under the new root.
    assert_eq!(a.custodian().await.rotate_root_key().await.unwrap(), 2);
    let custodian_b = b.custodian().await;
    within(
        Duration::from_secs(10),
        "the rotation reaches b",
        || async { custodian_b.root_keys().await.unwrap().versions.len() == 2 },
    )
    .await;
    within(Duration::from_secs(20), "the re-wrap ends", || async {
        custodian_b.rewrap_status().await.unwrap().finished
    })
    .await;
    cb.put(&user("n1", "newcomer")).await.unwrap();
    let keys = custodian_b.root_keys().await.unwrap();
    assert_eq!(keys.versions[0].wrapped_subject_keys, 0, "{keys:?}");
    assert_eq!(ca.get("users", "n1").await.unwrap(), user("n1", "newcomer"));

    // One log: exported through b, it verifies as one tree holding the
    // events of both servers, with dense indices.
    let size_a = a.vault.audit_log().size();
    let export_dir = tempfile::tempdir().unwrap();
    let key = crate::audit::export(&b, export_dir.path()).await;
    assert_eq!(
        crate::audit::verify(export_dir.path(), &key).await,
        (true, None, None)
    );
    let events = std::fs::read_to_string(export_dir.path().join("events.jsonl")).unwrap();
    let count = events.lines().count() as u64;
    assert!(
        count >= size_a,
        "{count} events exported, a had seen {size_a}"
    );
    for (i, line) in events.lines().enumerate() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(e["index"], i as u64, "dense indices");
    }
    // Both servers' writes are in it: 42 puts, a delete, 80 gets and more.
    let puts = events
        .lines()
        .filter(|l| l.contains("\"operation\":\"write\""))
        .count();
    assert!(puts >= 43, "{puts} writes");
    drop((ca, cb, custodian_b));
    a.stop_beside_others().await;
    b.stop_beside_others().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_wrap_left_by_a_stopped_server_is_finished_by_the_other() {
    if vault_tests::skip_without_postgres() {
        return;
    }
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Twenty keys a second: the re-wrap of 60 subjects takes about three
    // seconds, long enough to stop its server part way.
    let (a, b) = pair(a_dir.path(), b_dir.path(), 20).await;
    let client = a.client().await;
    let subjects = 60u64;
    let records: Vec<_> = (0..subjects)
        .map(|i| user(&format!("r{i}"), &format!("p{i}")))
        .collect();
    client.put_many(&records).await.unwrap();
    drop(client);
    // a started first: it leads the background jobs.
    let custodian_a = a.custodian().await;
    assert_eq!(custodian_a.rotate_root_key().await.unwrap(), 2);
    within(Duration::from_secs(10), "a re-wraps", || async {
        let p = custodian_a.rewrap_status().await.unwrap();
        p.rewrapped >= 5
    })
    .await;
    let part_way = custodian_a.rewrap_status().await.unwrap();
    assert!(!part_way.finished, "{part_way:?}");
    drop(custodian_a);
    // a goes away part way (its session, and with it the leader lock, ends).
    a.stop_beside_others().await;
    let left = b.custodian().await.rewrap_status().await.unwrap();
    assert!(!left.finished && left.rewrapped < subjects, "{left:?}");

    let custodian_b = b.custodian().await;
    within(
        Duration::from_secs(30),
        "b finishes the re-wrap",
        || async { custodian_b.rewrap_status().await.unwrap().finished },
    )
    .await;
    let end = custodian_b.rewrap_status().await.unwrap();
    assert_eq!(end.target_version, 2);
    assert!(end.pending_at_start >= subjects, "{end:?}");
    assert_eq!(end.unreadable, 0);
    let keys = custodian_b.root_keys().await.unwrap();
    assert_eq!(keys.versions[0].wrapped_subject_keys, 0, "{keys:?}");
    // Everything reads through b (its key cache cold for most subjects).
    let ids: Vec<String> = (0..subjects).map(|i| format!("r{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let got = b.client().await.get_many("users", &ids, &[]).await.unwrap();
    assert!(got.missing_ids.is_empty());
    assert_eq!(got.records, records);
    drop(custodian_b);
    b.stop_beside_others().await;
}

/// The store-level guards two servers rely on, on a real PostgreSQL: a
/// keyring is saved only over the generation before (two servers changing
/// it at once: one wins, the other is told), and a write's conditions are
/// checked in its own transaction (of two writes expecting the same state,
/// one is applied). Also: keys come back in RocksDB's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyring_saves_and_conditional_writes_from_two_servers_never_both_win() {
    use vault_server::storage::{KeyringStore, PgStore, Store, Table, WriteSet};
    use vault_server::Error;
    if vault_tests::skip_without_postgres() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = vault_tests::postgres_database_for(dir.path()).await;
    tokio::task::spawn_blocking(move || {
        let one = PgStore::open(&PgOptions::new(&url)).unwrap();
        let two = PgStore::open(&PgOptions::new(&url)).unwrap();
        assert!(one.shared());
        // Keyring generations.
        assert_eq!(one.generation().unwrap(), None);
        KeyringStore::write(&one, b"g1", 1).unwrap();
        assert!(matches!(
            KeyringStore::write(&two, b"g1 again", 1),
            Err(Error::Conflict)
        ));
        KeyringStore::write(&two, b"g2 by two", 2).unwrap();
        assert!(matches!(
            KeyringStore::write(&one, b"g2 by one", 2),
            Err(Error::Conflict)
        ));
        assert!(matches!(
            KeyringStore::write(&one, b"g4", 4),
            Err(Error::Conflict)
        ));
        assert_eq!(one.generation().unwrap(), Some(2));
        // A write made under an older keyring is refused whole.
        let mut stale = WriteSet::new();
        stale.expect_keyring(1);
        stale.put(
            Table::SubjectKeys,
            b"wrapped under g1".to_vec(),
            b"k".to_vec(),
        );
        assert!(matches!(Store::write(&two, stale), Err(Error::Conflict)));
        assert_eq!(
            two.get(Table::SubjectKeys, b"wrapped under g1").unwrap(),
            None
        );
        let mut current = WriteSet::new();
        current.expect_keyring(2);
        current.put(
            Table::SubjectKeys,
            b"wrapped under g2".to_vec(),
            b"k".to_vec(),
        );
        Store::write(&two, current).unwrap();
        assert_eq!(KeyringStore::read(&one).unwrap().unwrap(), b"g2 by two");
        // Conditions: both expect the key absent; the second write fails
        // whole (its other change is not applied either).
        let set = |value: &[u8], other: &[u8]| {
            let mut ws = WriteSet::new();
            ws.expect(Table::Meta, b"k".to_vec(), None);
            ws.put(Table::Meta, b"k".to_vec(), value.to_vec());
            ws.put(Table::Meta, other.to_vec(), b"x".to_vec());
            ws
        };
        Store::write(&one, set(b"one", b"o1")).unwrap();
        assert!(matches!(
            Store::write(&two, set(b"two", b"o2")),
            Err(Error::Conflict)
        ));
        assert_eq!(two.get(Table::Meta, b"k").unwrap().unwrap(), b"one");
        assert_eq!(two.get(Table::Meta, b"o2").unwrap(), None);
        let mut ws = WriteSet::new();
        ws.expect(Table::Meta, b"k".to_vec(), Some(b"one".to_vec()));
        ws.put(Table::Meta, b"k".to_vec(), b"two".to_vec());
        Store::write(&two, ws).unwrap();
        // Byte order, prefixes ending in 0xFF, the greatest key of a prefix.
        let mut ws = WriteSet::new();
        for k in [
            &b"a\xff"[..],
            b"a\xff\x00",
            b"a\xff\xff",
            b"b",
            b"a",
            b"a\x00",
        ] {
            ws.put(Table::Index, k.to_vec(), k.to_vec());
        }
        Store::write(&one, ws).unwrap();
        let keys =
            |rows: Vec<(Vec<u8>, Vec<u8>)>| rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(two.scan_prefix(Table::Index, b"a\xff").unwrap()),
            vec![
                b"a\xff".to_vec(),
                b"a\xff\x00".to_vec(),
                b"a\xff\xff".to_vec()
            ]
        );
        assert_eq!(
            keys(two.scan_from(Table::Index, b"a\x00", 2).unwrap()),
            vec![b"a\x00".to_vec(), b"a\xff".to_vec()]
        );
        assert_eq!(
            two.last_with_prefix(Table::Index, b"a").unwrap().unwrap().0,
            b"a\xff\xff".to_vec()
        );
        let mut visited = Vec::new();
        two.visit(Table::Index, &mut |k, _| visited.push(k.to_vec()))
            .unwrap();
        assert_eq!(visited.len(), 6);
        assert!(visited.windows(2).all(|w| w[0] < w[1]), "{visited:?}");
        // One leader at a time: the second store's session cannot take the
        // lock while the first holds it; it can once the first is gone.
        assert!(one.lead().unwrap());
        assert!(one.lead().unwrap());
        assert!(!two.lead().unwrap());
        drop(one);
        let start = std::time::Instant::now();
        while !two.lead().unwrap() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the lock was not released"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
}

/// Two audit logs (two servers) over one database append to one chain,
/// and a database that lost its newest events (a restore, a failover to a
/// standby that was behind) and grew again through another server is not
/// appended to by a server that saw the lost ones: no fork, it refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_audit_logs_on_one_database_append_to_one_chain_and_never_fork() {
    use std::sync::Arc;
    use vault_server::audit::{AuditLog, Event};
    use vault_server::storage::{PgStore, Store, Table, WriteSet};
    if vault_tests::skip_without_postgres() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = vault_tests::postgres_database_for(dir.path()).await;
    tokio::task::spawn_blocking(move || {
        let store = |url: &str| -> Arc<dyn Store> {
            Arc::new(PgStore::open(&PgOptions::new(url)).unwrap())
        };
        let (sa, sb) = (store(&url), store(&url));
        let a = AuditLog::open(Arc::clone(&sa)).unwrap();
        let b = AuditLog::open(Arc::clone(&sb)).unwrap();
        let ev = |op: &str| Event::new("t", None, op, None);
        // Interleaved appends: dense indices in commit order.
        let mut indices = Vec::new();
        for i in 0..10 {
            let log = if i % 3 == 0 { &a } else { &b };
            indices.push(log.commit(WriteSet::new(), ev("x")).unwrap());
        }
        assert_eq!(indices, (0..10).collect::<Vec<u64>>());
        assert_eq!((a.size(), b.size()), (10, 10));
        assert_eq!(a.root(), b.root());
        // The database loses its last two events (as a restore would),
        // and b, reopened over it, appends two others.
        let mut lose = WriteSet::new();
        let mut head = 8u64.to_be_bytes().to_vec();
        let ev7 = sa
            .get(Table::Audit, &[&b"e"[..], &7u64.to_be_bytes()].concat())
            .unwrap()
            .unwrap();
        head.extend_from_slice(&leaf_hash(&ev7));
        lose.put(Table::Audit, b"h".to_vec(), head);
        lose.put(Table::Audit, b"i".to_vec(), 8u64.to_be_bytes().to_vec());
        for i in 8u64..10 {
            lose.delete(Table::Audit, [&b"e"[..], &i.to_be_bytes()].concat());
        }
        Store::write(sa.as_ref(), lose).unwrap();
        drop(b);
        let b = AuditLog::open(Arc::clone(&sb)).unwrap();
        assert_eq!(b.size(), 8);
        assert_eq!(b.commit(WriteSet::new(), ev("other")).unwrap(), 8);
        assert_eq!(b.commit(WriteSet::new(), ev("other")).unwrap(), 9);
        // a saw events 8 and 9 that are gone: the same size, another head.
        // It refuses to append rather than fork the chain.
        let refused = a.commit(WriteSet::new(), ev("fork?"));
        assert!(refused.is_err(), "{refused:?}");
        assert!(a.writable().is_err());
        assert_eq!(b.size(), 10);
        let stored = sa
            .get(Table::Audit, &[&b"e"[..], &10u64.to_be_bytes()].concat())
            .unwrap();
        assert_eq!(
            stored, None,
            "no event appended by the server that saw another history"
        );
    })
    .await
    .unwrap();
}

/// RFC 6962 leaf hash (the audit log's).
fn leaf_hash(leaf: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

/// Fences: while one server holds a fence, a write of another that expects
/// it fails, and so does one made under its epoch from before the hold; a
/// second holder waits for the first; a holder whose session ended cannot
/// write as if it still held the fence. A condition on a row that
/// exists holds it: a write of that row without a condition (a rotation's
/// delete) in flight makes the conditional write fail, never land after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_keep_other_servers_writes_out_while_held_and_after() {
    use vault_server::storage::{PgStore, Store, Table, WriteSet};
    use vault_server::Error;
    if vault_tests::skip_without_postgres() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = vault_tests::postgres_database_for(dir.path()).await;
    let stores = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let one = PgStore::open(&PgOptions::new(&url)).unwrap();
            let two = PgStore::open(&PgOptions::new(&url)).unwrap();
            (std::sync::Arc::new(one), std::sync::Arc::new(two))
        })
        .await
        .unwrap()
    };
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let client = std::sync::Arc::new(client);
    // Sessions of the database waiting for a lock.
    let waiting = |client: std::sync::Arc<tokio_postgres::Client>| async move {
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0) > 0
    };
    let (one, two) = stores.clone();
    let (rt, raw) = (tokio::runtime::Handle::current(), client.clone());
    tokio::task::spawn_blocking(move || {
        let write = |store: &PgStore, fences: &[(u32, u64)], key: &[u8]| {
            let mut ws = WriteSet::new();
            ws.expect_fences(fences.iter().copied());
            ws.put(Table::Records, key.to_vec(), b"v".to_vec());
            Store::write(store, ws)
        };
        assert_eq!(two.fence_epochs(&[5, 7]).unwrap(), vec![0, 0]);
        write(&two, &[(5, 0)], b"before").unwrap();
        let held = one.hold_fences(&[5]).unwrap();
        // Held elsewhere: refused whole; another fence is free.
        assert!(matches!(
            write(&two, &[(5, 0), (7, 0)], b"during"),
            Err(Error::Conflict)
        ));
        assert_eq!(two.get(Table::Records, b"during").unwrap(), None);
        write(&two, &[(7, 0)], b"other fence").unwrap();
        // The holder's own write moves the fence on.
        let mut ws = WriteSet::new();
        ws.bump_fences([5], held.holder());
        ws.put(Table::Records, b"holder".to_vec(), b"h".to_vec());
        Store::write(one.as_ref(), ws).unwrap();
        // A second holder waits for the first.
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let two = std::sync::Arc::clone(&two);
            std::thread::spawn(move || {
                let second = two.hold_fences(&[3, 5]).unwrap();
                tx.send(()).unwrap();
                drop(second);
            })
        };
        rt.block_on(within(
            Duration::from_secs(10),
            "the second holder waits",
            || waiting(raw.clone()),
        ));
        assert!(rx.try_recv().is_err(), "a second holder did not wait");
        drop(held);
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        waiter.join().unwrap();
        // Made under the epoch from before the holder's write: refused.
        assert!(matches!(
            write(&two, &[(5, 0)], b"after"),
            Err(Error::Conflict)
        ));
        // Taking, writing under and letting go of a hold each moved it on
        // (the second holder's too).
        assert_eq!(two.fence_epochs(&[3, 5, 7]).unwrap(), vec![2, 5, 0]);
        write(&two, &[(5, 5)], b"after").unwrap();
        // Two requests of one group under two epochs of a fence: refused.
        assert!(matches!(
            write(&two, &[(5, 5), (5, 4)], b"mixed"),
            Err(Error::Conflict)
        ));
        // A hold lost with its session: the holder's write fails.
        let held = one.hold_fences(&[9]).unwrap();
        let pid = i32::try_from(held.holder().unwrap()).unwrap();
        rt.block_on(raw.execute("SELECT pg_terminate_backend($1)", &[&pid]))
            .unwrap();
        // The session ends a moment later.
        rt.block_on(within(Duration::from_secs(10), "the session ends", || {
            let raw = raw.clone();
            async move {
                let row = raw
                    .query_one("SELECT count(*) FROM pg_locks WHERE pid = $1", &[&pid])
                    .await
                    .unwrap();
                row.get::<_, i64>(0) == 0
            }
        }));
        let mut ws = WriteSet::new();
        ws.bump_fences([9], held.holder());
        ws.put(Table::Records, b"lost hold".to_vec(), b"h".to_vec());
        assert!(matches!(
            Store::write(one.as_ref(), ws),
            Err(Error::Conflict)
        ));
        assert_eq!(two.get(Table::Records, b"lost hold").unwrap(), None);
        drop(held);
        // Out of range.
        assert!(matches!(
            two.hold_fences(&[vault_server::storage::INDEX_FENCE + 1]),
            Err(Error::Storage(_))
        ));
        let mut ws = WriteSet::new();
        ws.put(Table::SubjectKeys, b"row".to_vec(), b"v1".to_vec());
        Store::write(one.as_ref(), ws).unwrap();
    })
    .await
    .unwrap();

    // A delete of "row" without a condition, in flight in another session.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute(
            "DELETE FROM vault_subject_keys WHERE k = $1",
            &[&b"row".to_vec()],
        )
        .await
        .unwrap();
    let (_, two) = stores;
    let conditional = tokio::task::spawn_blocking(move || {
        let mut ws = WriteSet::new();
        ws.expect(Table::SubjectKeys, b"row".to_vec(), Some(b"v1".to_vec()));
        ws.put(
            Table::SubjectKeys,
            b"row".to_vec(),
            b"v1 re-wrapped".to_vec(),
        );
        let written = Store::write(two.as_ref(), ws);
        (written, two.get(Table::SubjectKeys, b"row").unwrap())
    });
    // The conditional write waits for the delete's row lock...
    within(Duration::from_secs(10), "the write waits", || {
        waiting(client.clone())
    })
    .await;
    // ...and fails once the delete commits: the row stays deleted.
    client.batch_execute("COMMIT").await.unwrap();
    let (written, row) = conditional.await.unwrap();
    assert!(matches!(written, Err(Error::Conflict)), "{written:?}");
    assert_eq!(row, None);
}

/// Puts `r`: true once written, false if it answered `ABORTED` (a change
/// of another server in the way; the client may try again); any other
/// error fails the test.
async fn put_or_aborted(c: &vault_client::VaultClient, r: &vault_client::Record) -> bool {
    match c.put(r).await {
        Ok(()) => true,
        Err(vault_client::Error::Other {
            code: tonic::Code::Aborted,
            ..
        }) => false,
        Err(e) => panic!("write of {}: {e}", r.id),
    }
}

/// A subject's key rotated again and again through one server while its
/// records are written through the other: every write either fails
/// (`ABORTED`, and is retried) or lands under a key that still exists, and
/// the rotation never writes back over it. Every record reads back with
/// its last acknowledged value, through both servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_through_one_server_never_strand_writes_through_the_other() {
    if vault_tests::skip_without_postgres() {
        return;
    }
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = pair(a_dir.path(), b_dir.path(), 0).await;
    let (ca, cb) = (a.client().await, b.client().await);
    let record = |id: &str, n: usize| user(id, "rotated").with("name", format!("v{n}"));
    for i in 0..4 {
        ca.put(&record(&format!("r{i}"), 0)).await.unwrap();
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (cb, done) = (cb.clone(), done.clone());
        tokio::spawn(async move {
            let mut last = std::collections::HashMap::new();
            let (mut n, mut aborted) = (0usize, 0usize);
            while !done.load(std::sync::atomic::Ordering::SeqCst) || n < 40 {
                n += 1;
                let id = format!("r{}", n % 4);
                if put_or_aborted(&cb, &record(&id, n)).await {
                    last.insert(id, n);
                } else {
                    aborted += 1;
                }
            }
            (last, n, aborted)
        })
    };
    let custodian = a.custodian().await;
    for _ in 0..15 {
        custodian.rotate_subject_key("rotated").await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (last, writes, aborted) = writer.await.unwrap();
    eprintln!("{writes} writes through b, {aborted} aborted, beside 15 rotations through a");
    for (id, n) in &last {
        let expected = record(id, *n);
        assert_eq!(
            ca.get("users", id).await.unwrap(),
            expected,
            "{id} through a"
        );
        assert_eq!(
            cb.get("users", id).await.unwrap(),
            expected,
            "{id} through b"
        );
    }
    drop((ca, cb, custodian));
    a.stop_beside_others().await;
    b.stop_beside_others().await;
}

/// A subject erased through one server again and again while records of
/// it are written through the other: no write lands under a key an
/// erasure destroyed. After each erasure, every record of the subject
/// still stored reads back, through both servers (none is left that no
/// key opens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasures_through_one_server_leave_no_write_through_the_other_under_a_destroyed_key() {
    if vault_tests::skip_without_postgres() {
        return;
    }
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = pair(a_dir.path(), b_dir.path(), 0).await;
    let (ca, cb) = (a.client().await, b.client().await);
    let record = |n: usize| user(&format!("r{n}"), "erased").with("name", format!("v{n}"));
    // Held by the writer for each write; taken to pause it.
    let turn = std::sync::Arc::new(tokio::sync::Mutex::new(0usize));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (cb, done, turn) = (cb.clone(), done.clone(), turn.clone());
        tokio::spawn(async move {
            let mut aborted = 0usize;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let mut n = turn.lock().await;
                *n += 1;
                if !put_or_aborted(&cb, &record(*n)).await {
                    aborted += 1;
                }
            }
            aborted
        })
    };
    let store = vault_tests::raw_store(a_dir.path()).await;
    let mut erasures = 0;
    for _ in 0..10 {
        // Some writes before each erasure, and some beside it.
        while *turn.lock().await < erasures * 10 + 5 {
            tokio::task::yield_now().await;
        }
        ca.erase_subject("erased").await.unwrap();
        erasures += 1;
        let written = turn.lock().await;
        let mut readable = 0;
        for n in 1..=*written {
            let id = format!("r{n}");
            let mut found = Vec::new();
            for c in [&ca, &cb] {
                match c.get("users", &id).await {
                    Ok(r) => {
                        assert_eq!(r, record(n));
                        found.push(true);
                    }
                    Err(vault_client::Error::NotFound(_)) => found.push(false),
                    Err(e) => panic!("{id}: {e}"),
                }
            }
            assert_eq!(found[0], found[1], "{id}: the servers disagree");
            readable += usize::from(found[0]);
        }
        let store = store.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let mut n = 0;
            store
                .visit(vault_server::storage::Table::Records, &mut |_, _| n += 1)
                .unwrap();
            n
        })
        .await
        .unwrap();
        assert_eq!(
            stored, readable,
            "after erasure {erasures}: records stored that no key opens"
        );
        drop(written);
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let aborted = writer.await.unwrap();
    eprintln!("{aborted} writes through b aborted, beside {erasures} erasures through a");
    drop((ca, cb));
    a.stop_beside_others().await;
    b.stop_beside_others().await;
}

/// The blind-index key rotated through one server while new records of
/// known subjects (their keys made before) are written through the other,
/// which takes the rotation up at its next sync (within a second) or when
/// one of its writes meets it: once the rebuild has ended, no index row of
/// the old key is left, and every record is found through both servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_key_rotation_through_one_server_leaves_no_old_rows_from_the_other() {
    if vault_tests::skip_without_postgres() {
        return;
    }
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = pair(a_dir.path(), b_dir.path(), 0).await;
    let (ca, cb) = (a.client().await, b.client().await);
    ca.create_collection(&crate::search::people())
        .await
        .unwrap();
    for n in 0..20 {
        cb.put(&crate::search::person(
            &format!("p{n}"),
            &format!("s{n}"),
            "x@example.eu",
            1,
        ))
        .await
        .unwrap();
        // Subjects whose keys b has made, and whose fences no rebuild
        // batch will hold (their records are not indexed).
        cb.put(&user(&format!("u{n}"), &format!("t{n}")))
            .await
            .unwrap();
    }
    let person = |n: usize| {
        crate::search::person(
            &format!("q{n}"),
            &format!("t{}", n % 20),
            &format!("a{n}@example.eu"),
            1,
        )
    };
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (cb, done) = (cb.clone(), done.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) || n < 20 {
                cb.put(&person(n)).await.unwrap();
                n += 1;
            }
            n
        })
    };
    let custodian = a.custodian().await;
    assert_eq!(custodian.rotate_index_key().await.unwrap(), 2);
    within(Duration::from_secs(20), "the rebuild ends", || async {
        custodian.reindex_status().await.unwrap().finished
    })
    .await;
    // Writes through b go on until b has taken the rotation up.
    let custodian_b = b.custodian().await;
    within(
        Duration::from_secs(10),
        "b takes the rotation up",
        || async { custodian_b.reindex_status().await.unwrap().target_version == 2 },
    )
    .await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let writes = writer.await.unwrap();
    let (_, versions) = crate::reindex::index_rows(a_dir.path()).await;
    assert!(!versions.is_empty());
    assert!(
        versions.iter().all(|v| *v == 2),
        "index rows of the old key after {writes} writes through b: {versions:?}"
    );
    for n in 0..writes {
        for c in [&ca, &cb] {
            let found = c
                .find("people", "email", &format!("a{n}@example.eu"), &[], 10)
                .await
                .unwrap();
            assert_eq!(found.len(), 1, "a{n}: {found:?}");
            assert_eq!(found[0].id, format!("q{n}"));
        }
    }
    drop((ca, cb, custodian, custodian_b));
    a.stop_beside_others().await;
    b.stop_beside_others().await;
}

/// The script that starts and stops a throwaway PostgreSQL.
const PG_TEST_SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg-test-server");

/// A PostgreSQL of this test's own, stopped when dropped.
struct OwnPostgres {
    dir: tempfile::TempDir,
    url: String,
}

impl OwnPostgres {
    fn start() -> OwnPostgres {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(PG_TEST_SERVER)
            .arg("start")
            .arg(dir.path().join("pg"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        OwnPostgres { dir, url }
    }

    /// Puts `file` in the cluster's data folder, readable by the server
    /// only (as PostgreSQL asks of its key).
    fn put(&self, name: &str, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join("pg/data").join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        // As root, the server runs as the `postgres` user.
        if running_as_root() {
            let status = std::process::Command::new("chown")
                .arg("postgres:")
                .arg(&path)
                .status()
                .unwrap();
            assert!(status.success());
        }
    }
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new(PG_TEST_SERVER)
            .arg("stop")
            .arg(self.dir.path().join("pg"))
            .status();
    }
}

/// A CA and a certificate (with its key) it issued for 127.0.0.1.
fn database_certificate() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap().pem();
    (ca_pem, cert, key.serialize_pem())
}

/// With `sslmode=require` every connection to the database is TLS, whose
/// certificate must chain to the configured CA and name the host: a vault
/// runs over it end to end; another CA, or another host name, is refused
/// with a message that says TLS failed and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_to_postgres_is_tls_checked_against_the_configured_ca() {
    use vault_server::storage::{PgStore, Store, Table, WriteSet};
    if vault_tests::skip_without_postgres() {
        return;
    }
    let pg = tokio::task::spawn_blocking(OwnPostgres::start)
        .await
        .unwrap();
    let (ca, cert, key) = database_certificate();
    pg.put("server.crt", &cert);
    pg.put("server.key", &key);
    let (client, connection) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("ALTER SYSTEM SET ssl = on")
        .await
        .unwrap();
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let client = std::sync::Arc::new(client);
    within(Duration::from_secs(10), "TLS is on", || {
        let client = client.clone();
        async move {
            let row = client.query_one("SHOW ssl", &[]).await.unwrap();
            row.get::<_, String>(0) == "on"
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, database_certificate().0).unwrap();
    let pg_options = |url: String, ca: &std::path::Path| {
        let mut o = PgOptions::new(url);
        o.ca_file = Some(ca.to_owned());
        o
    };
    let tls_url = format!("{} sslmode=require application_name=vaulttls", pg.url);

    // The store speaks TLS, every connection of it.
    let opened = {
        let o = pg_options(tls_url.clone(), &ca_file);
        tokio::task::spawn_blocking(move || {
            let store = PgStore::open(&o).unwrap();
            let mut ws = WriteSet::new();
            ws.put(Table::Meta, b"over tls".to_vec(), b"yes".to_vec());
            store.write(ws).unwrap();
            let read = store.get(Table::Meta, b"over tls").unwrap();
            (store, read)
        })
        .await
        .unwrap()
    };
    assert_eq!(opened.1.as_deref(), Some(&b"yes"[..]));
    let row = client
        .query_one(
            "SELECT count(*), bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a \
             USING (pid) WHERE a.application_name = 'vaulttls'",
            &[],
        )
        .await
        .unwrap();
    let (sessions, all_tls): (i64, Option<bool>) = (row.get(0), row.get(1));
    assert!(
        sessions >= 1 && all_tls == Some(true),
        "{sessions} {all_tls:?}"
    );
    drop(opened);

    // A certificate of another CA, or for another name: refused.
    for (url, ca, why) in [
        // (Both test CAs have one name: the signature is what fails.)
        (
            tls_url.clone(),
            other_ca.as_path(),
            "invalid peer certificate",
        ),
        (
            tls_url.replace("host=127.0.0.1", "host=localhost"),
            ca_file.as_path(),
            "not valid for name",
        ),
    ] {
        let o = pg_options(url, ca);
        let refused = tokio::task::spawn_blocking(move || PgStore::open(&o).err())
            .await
            .unwrap();
        match refused {
            Some(vault_server::Error::Unavailable(m)) => {
                assert!(
                    m.contains("TLS to the vault's database failed") && m.contains(why),
                    "{m}"
                )
            }
            other => panic!("expected a TLS failure, got {other:?}"),
        }
    }

    // A vault over it, end to end.
    let vault_dir = tempfile::tempdir().unwrap();
    let mut opts = options(vault_dir.path(), &tls_url, 0);
    if let Some(pg) = opts.postgres.as_mut() {
        pg.ca_file = Some(ca_file.clone());
    }
    let vault = TestVault::start_dev_with(opts).await.unwrap();
    let c = vault.client().await;
    c.put(&user("t1", "tls")).await.unwrap();
    assert_eq!(c.get("users", "t1").await.unwrap(), user("t1", "tls"));
    // Its sessions of their own (the leader's, the audit appender's) too.
    let row = client
        .query_one(
            "SELECT count(*), bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a \
             USING (pid) WHERE a.application_name = 'vaulttls'",
            &[],
        )
        .await
        .unwrap();
    let (sessions, all_tls): (i64, Option<bool>) = (row.get(0), row.get(1));
    assert!(
        sessions >= 3 && all_tls == Some(true),
        "{sessions} {all_tls:?}"
    );
    drop(c);
    vault.stop_beside_others().await;
}

/// The development principals' policy: administration for the one, custody
/// for the other; `data` adds writes and reads of users.
fn dev_policy(data: bool) -> String {
    let mut p = String::from(
        "[principals]\n\"dev-root\" = [\"admin\"]\n\"dev-custodian\" = [\"keys\"]\n\n\
         [[roles.admin.rules]]\noperations = [\"admin\", \"audit\"]\n\n\
         [[roles.keys.rules]]\noperations = [\"custody\"]\n",
    );
    if data {
        p.push_str(
            "\n[[roles.admin.rules]]\ncollections = [\"users\"]\n\
             operations = [\"write\", \"read\"]\npurposes = [\"testing\"]\n",
        );
    }
    p
}

/// A policy reloaded through one server (from its own file) is in force on
/// the other within seconds, which records the reload in the shared log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reloaded_through_one_server_is_in_force_on_the_other() {
    use vault_server::policy::{Policy, PolicyHandle};
    if vault_tests::skip_without_postgres() {
        return;
    }
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let files = tempfile::tempdir().unwrap();
    let file = |dir: &std::path::Path| {
        files.path().join(format!(
            "{}.toml",
            dir.file_name().unwrap().to_string_lossy()
        ))
    };
    for d in [a_dir.path(), b_dir.path()] {
        std::fs::write(file(d), dev_policy(false)).unwrap();
    }
    let (a, b) = pair_with(a_dir.path(), b_dir.path(), 0, |opts| {
        let f = file(&opts.data_dir);
        opts.engine.policy = std::sync::Arc::new(PolicyHandle::new(
            Policy::load(&f).unwrap(),
            Some(f.clone()),
        ));
    })
    .await;
    let (ca, cb) = (a.client().await, b.client().await);
    assert!(matches!(
        cb.put(&user("u1", "s1")).await,
        Err(vault_client::Error::PermissionDenied(_))
    ));
    // a's file grants writes now; reloaded through a only.
    std::fs::write(file(a_dir.path()), dev_policy(true)).unwrap();
    ca.reload_policy().await.unwrap();
    within(Duration::from_secs(10), "b takes the policy up", || async {
        cb.put(&user("u1", "s1")).await.is_ok()
    })
    .await;
    assert_eq!(ca.get("users", "u1").await.unwrap(), user("u1", "s1"));
    let log = b.vault.audit_log().clone();
    let events = tokio::task::spawn_blocking(move || log.events(0, 10_000).unwrap())
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| String::from_utf8_lossy(e).contains("reloaded through another server")),
        "b records taking the policy up"
    );
    drop((ca, cb));
    a.stop_beside_others().await;
    b.stop_beside_others().await;
}
