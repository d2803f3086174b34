//! Malformed input gets a clear status and never a panic; the server keeps serving.

use vault_client::{Error, Record, Value, VaultClient};
use vault_proto::v1 as pb;
use vault_tests::{TestVault, TOKEN};

use crate::user;

#[tokio::test]
async fn bad_requests_get_clear_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;

    let r = client
        .put(&Record::new("ghosts", "1", "s").with("x", "y"))
        .await;
    assert!(
        matches!(r, Err(Error::NotFound(ref m)) if m.contains("ghosts")),
        "{r:?}"
    );

    let r = client
        .put(&user("u1", "s1").with("shoe_size", Value::Int64(42)))
        .await;
    assert!(
        matches!(r, Err(Error::InvalidInput(ref m)) if m.contains("unknown field shoe_size")),
        "{r:?}"
    );

    let r = client
        .put(&user("u1", "s1").with("birth_date", "yesterday"))
        .await;
    assert!(
        matches!(r, Err(Error::InvalidInput(ref m)) if m.contains("expects timestamp, got string")),
        "{r:?}"
    );
    if let Err(e) = r {
        assert!(
            !e.to_string().contains("yesterday"),
            "values are never echoed: {e}"
        );
    }

    let r = client.put(&user("", "s1")).await;
    assert!(
        matches!(r, Err(Error::InvalidInput(ref m)) if m.contains("record id is empty")),
        "{r:?}"
    );
    let r = client.put(&user("u1", "")).await;
    assert!(
        matches!(r, Err(Error::InvalidInput(ref m)) if m.contains("subject id is empty")),
        "{r:?}"
    );
    let r = client.put(&user("a\u{7}b", "s1")).await;
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
    let r = client.put(&user(&"x".repeat(129), "s1")).await;
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");

    let r = client
        .put(&user("u1", "s1").with("name", "x".repeat(70 * 1024)))
        .await;
    assert!(matches!(r, Err(Error::TooLarge(_))), "{r:?}");

    let many: Vec<_> = (0..501).map(|i| user(&format!("m{i}"), "s")).collect();
    let r = client.put_many(&many).await;
    assert!(
        matches!(r, Err(Error::TooLarge(ref m)) if m.contains("501 records")),
        "{r:?}"
    );
    let r = client.put_many(&[]).await;
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");

    let r = client.get_fields("users", "u1", &["nope"]).await;
    assert!(
        matches!(r, Err(Error::InvalidInput(ref m)) if m.contains("unknown field nope")),
        "{r:?}"
    );
    let r = client.get("users", "").await;
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
    let r = client.get("Bad Name", "x").await;
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
    let r = client.get("users", "missing").await;
    assert!(matches!(r, Err(Error::NotFound(_))), "{r:?}");

    let mut bad = crate::all_types("bad");
    bad.fields.push(bad.fields[0].clone());
    let r = client.create_collection(&bad).await;
    assert!(
        matches!(r, Err(Error::InvalidInput(ref m)) if m.contains("declared twice")),
        "{r:?}"
    );
    let r = client.create_collection(&crate::all_types("users")).await;
    assert!(matches!(r, Err(Error::AlreadyExists(_))), "{r:?}");
    let mut masked = crate::all_types("masked");
    masked.fields[1].mask = Some(vault_client::Mask {
        keep_first: 0,
        keep_last: 2,
    });
    let r = client.create_collection(&masked).await;
    assert!(
        matches!(r, Err(Error::InvalidInput(ref m)) if m.contains("mask")),
        "{r:?}"
    );

    // The server still works.
    client.put(&user("ok", "s1")).await.unwrap();
    drop(client);
    vault.stop().await;
}

#[tokio::test]
async fn bad_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let wrong = VaultClient::connect(vault.url(), "not-the-token")
        .await
        .unwrap();
    let r = wrong.get("users", "u1").await;
    assert!(
        matches!(r, Err(Error::Unauthenticated(ref m)) if m.contains("invalid token")),
        "{r:?}"
    );
    let r = wrong.collections().await;
    assert!(matches!(r, Err(Error::Unauthenticated(_))), "{r:?}");

    // No token at all, and a malformed header, through the raw generated client.
    let mut raw = pb::vault_service_client::VaultServiceClient::connect(vault.url())
        .await
        .unwrap();
    let status = raw
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status.message().contains("missing bearer token"),
        "{}",
        status.message()
    );
    let mut req = tonic::Request::new(pb::ListCollectionsRequest {});
    req.metadata_mut()
        .insert("authorization", TOKEN.parse().unwrap());
    let status = raw.list_collections(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    drop((wrong, raw));
    vault.stop().await;
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    req
}

#[tokio::test]
async fn malformed_messages_are_invalid_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let mut raw = pb::vault_service_client::VaultServiceClient::connect(vault.url())
        .await
        .unwrap();
    // A record message missing entirely.
    let s = raw
        .put_record(authed(pb::PutRecordRequest { record: None }))
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    // A value with no variant set.
    let mut fields = std::collections::HashMap::new();
    fields.insert("email".to_string(), pb::Value { kind: None });
    let record = pb::Record {
        collection: "users".into(),
        id: "x".into(),
        subject_id: "s".into(),
        fields,
        redacted_fields: Vec::new(),
        masked_fields: Vec::new(),
    };
    let s = raw
        .put_record(authed(pb::PutRecordRequest {
            record: Some(record),
        }))
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    // A timestamp with impossible nanos.
    let mut fields = std::collections::HashMap::new();
    fields.insert(
        "birth_date".to_string(),
        pb::Value {
            kind: Some(pb::value::Kind::TimestampValue(prost_types::Timestamp {
                seconds: 0,
                nanos: -5,
            })),
        },
    );
    let record = pb::Record {
        collection: "users".into(),
        id: "x".into(),
        subject_id: "s".into(),
        fields,
        redacted_fields: Vec::new(),
        masked_fields: Vec::new(),
    };
    let s = raw
        .put_record(authed(pb::PutRecordRequest {
            record: Some(record),
        }))
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    // An unknown enum value in a schema.
    let c = pb::Collection {
        name: "c".into(),
        fields: vec![pb::FieldSchema {
            name: "f".into(),
            r#type: 99,
            category: 1,
            ..Default::default()
        }],
        ..Default::default()
    };
    let s = raw
        .create_collection(authed(pb::CreateCollectionRequest {
            collection: Some(c),
        }))
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    // A purpose header that is not printable ASCII.
    let mut req = authed(pb::ListCollectionsRequest {});
    let bad = tonic::metadata::AsciiMetadataValue::try_from(b"caf\xe9".as_slice()).unwrap();
    req.metadata_mut().insert("x-vault-purpose", bad);
    let s = raw.list_collections(req).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    drop(raw);
    vault.stop().await;
}
