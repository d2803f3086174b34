//! Region routing through real sockets: a `RegionalClient` sends each
//! region's calls to that region's servers only, fails over from a dead or
//! sealed server to the next one and keeps to the one that answered,
//! returns answers (NOT_FOUND, PERMISSION_DENIED, ...) without trying
//! another server, and says so when every server of a region failed or a
//! region is unknown.
//!
//! The servers of one region here have separate data folders (a folder is
//! one process's), so that which server served a call shows in the data
//! and in each server's audit log.

use std::time::Duration;

use vault_client::{
    ClientBuilder, Error, RegionHandle, RegionMap, RegionalClient, UnsealShare, VaultClient,
};
use vault_server::vault::DEV_SHARE_FILE;
use vault_tests::{FreezableVault, TestVault, CUSTODIAN_TOKEN, PURPOSE, TOKEN};

use crate::search::people;
use crate::user;

/// The template of every regional client here: the data token and purpose.
fn template(token: &str) -> ClientBuilder {
    VaultClient::builder("unused").token(token).purpose(PURPOSE)
}

/// The handle of `region` of a client of `map` with `token`.
fn handle(map: &RegionMap, token: &str, region: &str) -> RegionHandle {
    RegionalClient::new(map, &template(token))
        .unwrap()
        .region(region)
        .unwrap()
}

/// An address where nothing listens: a port bound, then let go.
fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// gRPC requests a vault has begun to serve (every call it received,
/// answered or refused).
fn requests(vault: &TestVault) -> u64 {
    vault.vault.audit_log().requests_begun()
}

#[tokio::test]
async fn each_region_is_served_by_its_own_vault_and_keeps_its_data() {
    let (eu_dir, us_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let eu = TestVault::start(eu_dir.path(), "eu").await.unwrap();
    let us = TestVault::start(us_dir.path(), "us").await.unwrap();
    let map = RegionMap::new()
        .with_region("eu", [eu.url()])
        .unwrap()
        .with_region("us", [us.url()])
        .unwrap();
    let client = RegionalClient::new(&map, &template(TOKEN)).unwrap();
    let (eu_h, us_h) = (client.region("eu").unwrap(), client.region("us").unwrap());
    assert_eq!(eu_h.current_endpoint(), eu.url());
    assert_eq!(us_h.current_endpoint(), us.url());

    // Each handle reaches its region's vault (custody status names it).
    let custodians = RegionalClient::new(&map, &template(CUSTODIAN_TOKEN)).unwrap();
    for region in ["eu", "us"] {
        let status = custodians.region(region).unwrap().status().await.unwrap();
        assert_eq!(status.region, region);
    }

    // Written through the eu handle: read back through it, found nowhere
    // in the us vault, neither through the us handle nor directly.
    let record = user("r1", "s1");
    eu_h.put(&record).await.unwrap();
    assert_eq!(eu_h.get("users", "r1").await.unwrap(), record);
    let got = us_h.get("users", "r1").await;
    assert!(matches!(got, Err(Error::NotFound(_))), "{got:?}");
    let direct = us.client().await;
    let got = direct.get("users", "r1").await;
    assert!(matches!(got, Err(Error::NotFound(_))), "{got:?}");

    // And the other way round.
    let theirs = user("r2", "s2");
    us_h.put(&theirs).await.unwrap();
    let got = eu_h.get("users", "r2").await;
    assert!(matches!(got, Err(Error::NotFound(_))), "{got:?}");
    assert_eq!(direct.get("users", "r2").await.unwrap(), theirs);

    // Every data call of the handle stays in its region.
    let batch = [user("b1", "s3"), user("b2", "s4")];
    assert_eq!(eu_h.put_many(&batch).await.unwrap(), 2);
    let got = eu_h
        .get_many("users", &["b1", "b2", "r2"], &[])
        .await
        .unwrap();
    assert_eq!(got.records, batch);
    assert_eq!(got.missing_ids, ["r2"]);
    let fields = eu_h.get_fields("users", "b1", &["country"]).await.unwrap();
    assert_eq!(fields.get("country"), batch[0].get("country"));
    assert_eq!(fields.get("email"), None);
    let got = us_h.get_many("users", &["b1"], &[]).await.unwrap();
    assert_eq!(got.missing_ids, ["b1"]);
    assert!(eu_h.delete("users", "b2").await.unwrap());
    assert!(!eu_h.delete("users", "b2").await.unwrap());
    assert!(!us_h.delete("users", "b1").await.unwrap());
    assert_eq!(eu_h.get("users", "b1").await.unwrap(), batch[0]);

    eu_h.current_client()
        .create_collection(&people())
        .await
        .unwrap();
    let person = vault_client::Record::new("people", "p1", "s5")
        .with("email", "ada@example.eu")
        .with("number", 7_i64)
        .with("name", "Ada");
    eu_h.put(&person).await.unwrap();
    let found = eu_h
        .find("people", "email", "ADA@example.eu", &[], 10)
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].id, "p1");
    let got = us_h
        .find("people", "email", "ada@example.eu", &[], 10)
        .await;
    assert!(matches!(got, Err(Error::NotFound(_))), "{got:?}");

    drop((client, custodians, eu_h, us_h, direct));
    eu.stop().await;
    us.stop().await;
}

#[tokio::test]
async fn a_dead_endpoint_fails_over_to_the_next_whichever_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let live = TestVault::start(dir.path(), "eu").await.unwrap();

    // The dead one first: calls go on to the live one, which stays current.
    let dead = dead_address();
    let map = RegionMap::new()
        .with_region("eu", [dead.clone(), live.url()])
        .unwrap();
    let eu = handle(&map, TOKEN, "eu");
    assert_eq!(eu.current_endpoint(), dead);
    eu.put(&user("r1", "s1")).await.unwrap();
    assert_eq!(eu.current_endpoint(), live.url());
    assert_eq!(eu.get("users", "r1").await.unwrap(), user("r1", "s1"));
    assert_eq!(eu.current_endpoint(), live.url());
    // Clones of the handle, and new handles of the same client, share it.
    assert_eq!(eu.clone().current_endpoint(), live.url());

    // The live one first: it serves, the dead one is never needed.
    let map = RegionMap::new()
        .with_region("eu", [live.url(), dead_address()])
        .unwrap();
    let eu = handle(&map, TOKEN, "eu");
    assert_eq!(eu.get("users", "r1").await.unwrap(), user("r1", "s1"));
    assert_eq!(eu.current_endpoint(), live.url());

    // Two live ones: the first listed serves (the other, with a folder of
    // its own, has no r1 and is not asked).
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestVault::start(other_dir.path(), "eu").await.unwrap();
    let map = RegionMap::new()
        .with_region("eu", [live.url(), other.url()])
        .unwrap();
    let eu = handle(&map, TOKEN, "eu");
    let other_before = requests(&other);
    assert_eq!(eu.get("users", "r1").await.unwrap(), user("r1", "s1"));
    assert_eq!(eu.current_endpoint(), live.url());
    assert_eq!(requests(&other), other_before);

    drop(eu);
    live.stop().await;
    other.stop().await;
}

#[tokio::test]
async fn a_sealed_endpoint_fails_over_and_the_one_that_answered_stays_current() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestVault::start(a_dir.path(), "eu").await.unwrap();
    let b = TestVault::start(b_dir.path(), "eu").await.unwrap();
    let map = RegionMap::new()
        .with_region("eu", [a.url(), b.url()])
        .unwrap();
    let eu = handle(&map, TOKEN, "eu");

    let a_custodian = a.custodian().await;
    a_custodian.seal().await.unwrap();
    eu.put(&user("r1", "s1")).await.unwrap();
    assert_eq!(eu.current_endpoint(), b.url());
    // The put went to b: a (its own folder) does not have the record.
    let a_client = a.client().await;
    let got = a_client.get("users", "r1").await;
    assert!(got.as_ref().is_err_and(Error::is_sealed), "{got:?}");

    // a serves again, but b answered last: calls keep going to b.
    let share = std::fs::read_to_string(a_dir.path().join(DEV_SHARE_FILE)).unwrap();
    assert!(
        !a_custodian
            .unseal(&UnsealShare::new(share))
            .await
            .unwrap()
            .sealed
    );
    let a_before = requests(&a);
    assert_eq!(eu.get("users", "r1").await.unwrap(), user("r1", "s1"));
    assert_eq!(eu.current_endpoint(), b.url());
    assert_eq!(requests(&a), a_before, "a call went to a");
    let got = a_client.get("users", "r1").await;
    assert!(matches!(got, Err(Error::NotFound(_))), "{got:?}");

    drop((eu, a_client, a_custodian));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_region_whose_every_endpoint_is_dead_says_so() {
    let (first, second) = (dead_address(), dead_address());
    let map = RegionMap::new()
        .with_region("eu", [first.clone(), second.clone()])
        .unwrap();
    let eu = handle(&map, TOKEN, "eu");
    let err = eu.put(&user("r1", "s1")).await.unwrap_err();
    let message = err.to_string();
    match &err {
        Error::AllEndpointsFailed {
            region,
            tried,
            last,
        } => {
            assert_eq!(region, "eu");
            assert_eq!(tried, &[first.clone(), second.clone()]);
            assert!(matches!(**last, Error::Connect(_)), "{last:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        message.starts_with(&format!(
            "every endpoint of region eu failed ({first}, {second}); the last one said: \
             cannot reach the vault"
        )),
        "{message}"
    );
    assert_eq!(err.kind(), "all_endpoints_failed");
    assert!(err.is_transient());
    // Nothing answered: the first endpoint is still the one tried first.
    assert_eq!(eu.current_endpoint(), first);
}

#[tokio::test]
async fn an_unknown_region_fails_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let eu = TestVault::start(dir.path(), "eu").await.unwrap();
    let map = RegionMap::new()
        .with_region("eu", [eu.url()])
        .unwrap()
        .with_region("us", [dead_address()])
        .unwrap();
    let client = RegionalClient::new(&map, &template(TOKEN)).unwrap();
    let before = requests(&eu);
    let err = client.region("ap").unwrap_err();
    assert!(
        matches!(&err, Error::UnknownRegion { region, known } if region == "ap" && known == &["eu", "us"]),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "unknown region `ap`: the known regions are eu, us"
    );
    assert_eq!(err.kind(), "unknown_region");
    assert_eq!(requests(&eu), before);
    drop(client);
    eu.stop().await;
}

#[tokio::test]
async fn answers_are_returned_at_once_and_never_retried_on_the_next_endpoint() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestVault::start(a_dir.path(), "eu").await.unwrap();
    let b = TestVault::start(b_dir.path(), "eu").await.unwrap();
    // b holds the record, a does not: a retry on b would find it.
    b.client().await.put(&user("r1", "s1")).await.unwrap();
    let map = RegionMap::new()
        .with_region("eu", [a.url(), b.url()])
        .unwrap();
    let eu = handle(&map, TOKEN, "eu");
    let (a_before, b_before) = (requests(&a), requests(&b));

    // NOT_FOUND from a.
    let got = eu.get("users", "r1").await;
    assert!(matches!(got, Err(Error::NotFound(_))), "{got:?}");
    let got = eu.get_many("users", &["r1"], &[]).await.unwrap();
    assert_eq!(got.missing_ids, ["r1"]);
    // PERMISSION_DENIED from a: the data token has no custody role.
    let got = eu.status().await;
    assert!(matches!(got, Err(Error::PermissionDenied(_))), "{got:?}");
    // INVALID_ARGUMENT from a: no such field.
    let got = eu.get_fields("users", "r1", &["no_such_field"]).await;
    assert!(
        matches!(got, Err(Error::InvalidInput(_) | Error::NotFound(_))),
        "{got:?}"
    );
    // UNAUTHENTICATED from a: an unknown token.
    let stranger = handle(&map, "not-a-known-token", "eu");
    let got = stranger.get("users", "r1").await;
    assert!(matches!(got, Err(Error::Unauthenticated(_))), "{got:?}");

    assert_eq!(requests(&a), a_before + 5, "every call went to a");
    assert_eq!(requests(&b), b_before, "a call was retried on b");
    assert_eq!(eu.current_endpoint(), a.url());
    assert_eq!(stranger.current_endpoint(), a.url());

    // With a dead endpoint next, the answer is still NOT_FOUND, not "every
    // endpoint failed".
    let map = RegionMap::new()
        .with_region("eu", [a.url(), dead_address()])
        .unwrap();
    let got = handle(&map, TOKEN, "eu").get("users", "r1").await;
    assert!(matches!(got, Err(Error::NotFound(_))), "{got:?}");

    drop((eu, stranger));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_timeout_is_returned_and_not_resent_to_the_next_endpoint() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // a, frozen, takes the call and never answers; b would answer at once.
    let a = FreezableVault::start(a_dir.path(), "eu").await;
    let b = TestVault::start(b_dir.path(), "eu").await.unwrap();
    let map = RegionMap::new()
        .with_region("eu", [a.url(), b.url()])
        .unwrap();
    let eu = RegionalClient::new(&map, &template(TOKEN).timeout(Duration::from_millis(300)))
        .unwrap()
        .region("eu")
        .unwrap();
    // Connected to a before it freezes.
    eu.put(&user("r0", "s0")).await.unwrap();
    assert_eq!(eu.current_endpoint(), a.url());

    let b_before = requests(&b);
    let frozen = a.freeze().await;
    let got = eu.put(&user("r1", "s1")).await;
    assert!(matches!(got, Err(Error::Timeout)), "{got:?}");
    assert_eq!(requests(&b), b_before, "the put was resent to b");
    assert_eq!(eu.current_endpoint(), a.url());
    drop(frozen);

    drop(eu);
    a.stop().await;
    b.stop().await;
}
