//! The typed client against real servers: purpose metadata, deadlines,
//! unreachable addresses, the mapping of the server's statuses to
//! [`Error`] variants, and a token that never shows.
//!
//! Answers that only a broken server could give (a value without a variant,
//! a missing message) are covered by the unit tests of `vault-client`.

use std::time::{Duration, Instant};

use vault_client::{
    Collection, DataCategory, Error, FieldSchema, FieldType, Record, Timestamp, Value, VaultClient,
};
use vault_tests::{FreezableVault, TestVault, TOKEN};

use crate::user;

#[tokio::test]
async fn client_purpose_metadata_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let support = VaultClient::builder(vault.url())
        .token(TOKEN)
        .purpose("support")
        .connect()
        .await
        .unwrap();
    assert_eq!(support.purpose(), Some("support"));
    support.put(&user("u1", "s1")).await.unwrap();
    assert_eq!(support.get("users", "u1").await.unwrap(), user("u1", "s1"));

    // Another purpose (spaces allowed) on the same connection, and none.
    let billing = support.with_purpose(Some("billing run 2024-06")).unwrap();
    assert_eq!(billing.purpose(), Some("billing run 2024-06"));
    assert_eq!(billing.collections().await.unwrap().len(), 1);
    let none = support.with_purpose(None).unwrap();
    assert_eq!(none.purpose(), None);
    // Without a purpose, schemas are readable but data is not.
    assert_eq!(none.collections().await.unwrap().len(), 1);
    let refused = none.delete("users", "u1").await;
    assert!(
        matches!(&refused, Err(Error::InvalidInput(m)) if m.contains("purpose")),
        "{refused:?}"
    );
    assert!(support.delete("users", "u1").await.unwrap());
    // The longest purpose the server takes: 128 characters.
    let longest = support.with_purpose(Some(&"p".repeat(128))).unwrap();
    longest.collections().await.unwrap();
    // The original is unchanged.
    assert_eq!(support.purpose(), Some("support"));
    support.collections().await.unwrap();
    vault.stop().await;
}

#[tokio::test]
async fn client_invalid_purposes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();

    // Not printable ASCII: refused by the client, before any call.
    for bad in ["café", "line\nbreak", "tab\there"] {
        let built = VaultClient::builder(vault.url())
            .token(TOKEN)
            .purpose(bad)
            .connect()
            .await;
        assert!(
            matches!(&built, Err(Error::InvalidInput(m))
                if m == "the purpose may only have printable ASCII characters"),
            "{bad:?}: {built:?}"
        );
    }
    let client = vault.client().await;
    assert!(matches!(
        client.with_purpose(Some("café")),
        Err(Error::InvalidInput(_))
    ));

    // Too long: the client sends it, the server refuses it.
    let long = client.with_purpose(Some(&"p".repeat(129))).unwrap();
    let refused = long.collections().await;
    match &refused {
        Err(Error::InvalidInput(m)) => assert_eq!(
            m,
            "x-vault-purpose must be at most 128 printable ASCII characters"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        refused.unwrap_err().to_string(),
        "invalid input: x-vault-purpose must be at most 128 printable ASCII characters"
    );
    // Nothing was written under the refused purpose.
    assert!(matches!(
        long.put(&user("u1", "s1")).await,
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        client.get("users", "u1").await,
        Err(Error::NotFound(_))
    ));
    drop((client, long));
    vault.stop().await;
}

#[tokio::test]
async fn client_tiny_deadlines_are_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    // The real server, on a thread of its own that the test can freeze: a
    // 1 ns deadline against a live local server loses the race to its
    // answer now and then, against a frozen one never.
    let vault = FreezableVault::start(dir.path(), "eu").await;
    let client = VaultClient::connect(vault.url(), TOKEN)
        .await
        .unwrap()
        .with_purpose(Some(vault_tests::PURPOSE))
        .unwrap();
    client.put(&user("u1", "s1")).await.unwrap();

    let frozen = vault.freeze().await;
    for deadline in [Duration::from_nanos(1), Duration::from_micros(1)] {
        let hasty = client.with_timeout(deadline);
        assert_eq!(hasty.timeout(), deadline);
        let got = hasty.get("users", "u1").await;
        assert!(matches!(got, Err(Error::Timeout)), "{deadline:?}: {got:?}");
    }
    // A longer deadline is kept, not cut short, and not overrun by much.
    let started = Instant::now();
    let got = client
        .with_timeout(Duration::from_millis(200))
        .put(&user("u2", "s2"))
        .await;
    let elapsed = started.elapsed();
    let err = got.unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    assert_eq!(
        err.to_string(),
        "deadline exceeded: the vault did not answer in time"
    );
    assert_eq!(err.kind(), "timeout");
    assert!(err.is_transient());
    drop(frozen);

    // Thawed, the same connection serves again.
    assert_eq!(client.get("users", "u1").await.unwrap(), user("u1", "s1"));
    drop(client);
    vault.stop().await;
}

#[tokio::test]
async fn client_unreachable_addresses_are_connect_errors() {
    // A port nobody listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let err = VaultClient::connect(addr.as_str(), TOKEN)
        .await
        .unwrap_err();
    match &err {
        Error::Connect(message) => assert!(!message.is_empty()),
        other => panic!("{other:?}"),
    }
    assert!(err.is_transient());
    assert!(!err.to_string().contains(TOKEN));

    // A lazy client fails on its first call instead.
    let lazy = VaultClient::builder(addr.as_str())
        .token(TOKEN)
        .connect_lazy()
        .unwrap();
    match lazy.collections().await {
        Err(Error::Connect(message)) => assert!(!message.is_empty()),
        other => panic!("{other:?}"),
    }

    // A vault that was there and stopped: the connected client's next call
    // is a connection error too.
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    client.collections().await.unwrap();
    vault.stop().await;
    match client.collections().await {
        Err(Error::Connect(message)) => assert!(!message.is_empty()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn client_debug_never_shows_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let builder = VaultClient::builder(vault.url())
        .token(TOKEN)
        .purpose("support")
        .timeout(Duration::from_secs(3));
    let debug = format!("{builder:?}");
    assert!(!debug.contains(TOKEN), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");

    let client = builder.connect().await.unwrap();
    for shown in [
        format!("{client:?}"),
        format!("{client:#?}"),
        format!("{:?}", client.clone()),
        format!("{:?}", client.with_timeout(Duration::from_secs(1))),
        format!("{:?}", client.with_purpose(Some("billing")).unwrap()),
    ] {
        assert!(!shown.contains(TOKEN), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains(&vault.url()), "{shown}");
    }
    // The client still works after being shown.
    client.collections().await.unwrap();

    // Nor does an authentication failure carry either token.
    let wrong = "wrong-secret-token";
    let stranger = VaultClient::connect(vault.url(), wrong).await.unwrap();
    let err = stranger.collections().await.unwrap_err();
    assert!(matches!(err, Error::Unauthenticated(_)), "{err:?}");
    for shown in [
        format!("{err}"),
        format!("{err:?}"),
        format!("{stranger:?}"),
    ] {
        assert!(!shown.contains(wrong) && !shown.contains(TOKEN), "{shown}");
    }
    drop((client, stranger));
    vault.stop().await;
}

#[tokio::test]
async fn client_records_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    // A bare host:port gets http://.
    let client = VaultClient::connect(vault.addr.to_string(), TOKEN)
        .await
        .unwrap();
    let client = client.with_purpose(Some(vault_tests::PURPOSE)).unwrap();
    assert_eq!(client.addr(), vault.url());

    let ada = |id: &str| {
        Record::new("users", id, "subject-ada")
            .with("email", "ada@example.eu")
            .with("name", "Ada Lovelace")
            .with("birth_date", "1815-12-10".parse::<Timestamp>().unwrap())
    };
    client.put(&ada("u1")).await.unwrap();
    assert_eq!(client.get("users", "u1").await.unwrap(), ada("u1"));

    let projected = client
        .get_fields("users", "u1", &["email", "birth_date"])
        .await
        .unwrap();
    assert_eq!(projected.fields.len(), 2);
    assert_eq!(
        projected.get("birth_date"),
        Some(&Value::Timestamp(Timestamp::from_unix_seconds(
            -4_861_728_000
        )))
    );

    let written = client
        .put_many(&[ada("u2"), ada("u3").with("country", "GB")])
        .await
        .unwrap();
    assert_eq!(written, 2);
    let batch = client
        .get_many("users", &["u3", "nobody", "u1"], &["country"])
        .await
        .unwrap();
    assert_eq!(
        batch
            .records
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        ["u3", "u1"],
        "in request order"
    );
    assert_eq!(batch.records[0].get("country"), Some(&Value::from("GB")));
    assert!(
        batch.records[1].fields.is_empty(),
        "u1 has no country: projected away to nothing"
    );
    assert_eq!(batch.records[1].subject_id, "subject-ada");
    assert_eq!(batch.missing_ids, ["nobody"]);

    assert!(client.delete("users", "u1").await.unwrap());
    assert!(!client.delete("users", "u1").await.unwrap());
    assert!(matches!(
        client.get("users", "u1").await,
        Err(Error::NotFound(_))
    ));
    drop(client);
    vault.stop().await;
}

#[tokio::test]
async fn client_collections() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;

    let orders = Collection::new("orders")
        .description("Orders")
        .field(FieldSchema::new(
            "total",
            FieldType::Double,
            DataCategory::Financial,
        ))
        .field(
            FieldSchema::new("card", FieldType::String, DataCategory::Financial)
                .indexed()
                .masked(0, 4),
        );
    let created = client.create_collection(&orders).await.unwrap();
    assert_eq!(created, orders.clone().region("eu"));
    assert!(matches!(
        client.create_collection(&orders).await,
        Err(Error::AlreadyExists(_))
    ));
    let abroad = Collection::new("us_only")
        .region("us")
        .field(FieldSchema::new(
            "a",
            FieldType::String,
            DataCategory::Other,
        ));
    assert!(matches!(
        client.create_collection(&abroad).await,
        Err(Error::FailedPrecondition(m)) if m.contains("us") && m.contains("eu")
    ));
    assert!(matches!(
        client.create_collection(&Collection::new("empty")).await,
        Err(Error::InvalidInput(_))
    ));

    let names: Vec<String> = client
        .collections()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["orders", "users"]);
    assert_eq!(client.collection("orders").await.unwrap(), created);
    let users = client.collection("users").await.unwrap();
    assert_eq!(users.region, "eu");
    assert_eq!(
        users
            .fields
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>(),
        [
            "email:string:contact:mask=1,0",
            "name:string:identity",
            "phone:string:contact:mask=0,4",
            "birth_date:timestamp:identity",
            "country:string:location"
        ]
    );
    assert!(matches!(
        client.collection("nope").await,
        Err(Error::NotFound(_))
    ));
    drop(client);
    vault.stop().await;
}

#[tokio::test]
async fn client_server_errors_map_to_their_variants() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;

    let stranger = VaultClient::connect(vault.url(), "wrong").await.unwrap();
    let err = stranger.collections().await.unwrap_err();
    assert!(
        matches!(&err, Error::Unauthenticated(m) if m == "invalid token"),
        "{err:?}"
    );
    assert_eq!(err.kind(), "unauthenticated");
    assert!(!err.is_transient());

    let bad = Record::new("users", "x", "s").with("shoe_size", 44i64);
    let err = client.put(&bad).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("shoe_size")),
        "{err:?}"
    );
    let wrong_type = Record::new("users", "x", "s").with("phone", 612_345_678i64);
    match client.put(&wrong_type).await {
        Err(Error::InvalidInput(m)) => {
            assert!(m.contains("phone"), "{m}");
            assert!(!m.contains("612345678"), "the value is not echoed: {m}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client.get_fields("users", "x", &["shoe_size"]).await,
        Err(Error::InvalidInput(m)) if m.contains("shoe_size")
    ));

    // Over the server's limits: 500 records per batch, 64 KiB per record.
    let many: Vec<Record> = (0..501).map(|i| user(&format!("b{i}"), "s1")).collect();
    assert!(matches!(
        client.put_many(&many).await,
        Err(Error::TooLarge(m)) if m.contains("501")
    ));
    let ids: Vec<String> = (0..501).map(|i| format!("b{i}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert!(matches!(
        client.get_many("users", &id_refs, &[]).await,
        Err(Error::TooLarge(_))
    ));
    let huge = Record::new("users", "huge", "s1").with("name", "x".repeat(64 * 1024 + 1));
    let err = client.put(&huge).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err:?}");
    assert_eq!(err.kind(), "too_large");

    let err = client.get("users", "nobody").await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    assert!(
        !err.to_string().contains("nobody"),
        "the id is not echoed: {err}"
    );
    assert!(matches!(
        client.get("nope", "u1").await,
        Err(Error::NotFound(m)) if m.contains("nope")
    ));
    // Nothing of the failed writes was stored.
    let batch = client
        .get_many("users", &["x", "b0", "huge"], &[])
        .await
        .unwrap();
    assert!(batch.records.is_empty());
    drop((client, stranger));
    vault.stop().await;
}
