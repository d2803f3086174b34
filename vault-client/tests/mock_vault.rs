//! The client and vaultctl against an in-process mock of `vault.v1`.
//!
//! The mock checks the bearer token, keeps collections and records in memory,
//! and has a few record ids with special behaviour: `tampered` answers
//! DATA_LOSS, `slow` answers after 3 s, `broken` answers a value with no
//! variant set.

// A test file: a failed unwrap is a failed test. (clippy's
// allow-unwrap-in-tests covers #[test] functions only, not the helpers.)
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value as Json};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use vault_client::{
    Collection, DataCategory, Error, FieldSchema, FieldType, Record, Timestamp, Value, VaultClient,
};
use vault_proto::v1 as pb;
use vault_proto::v1::vault_service_server::{VaultService, VaultServiceServer};

const TOKEN: &str = "good-token";

#[derive(Default)]
struct State {
    collections: Mutex<BTreeMap<String, pb::Collection>>,
    records: Mutex<BTreeMap<(String, String), pb::Record>>,
    purposes: Mutex<Vec<Option<String>>>,
    deadlines: Mutex<Vec<Option<String>>>,
}

#[derive(Clone)]
struct Mock(Arc<State>);

impl Mock {
    fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let metadata = request.metadata();
        let header = |key: &str| {
            metadata
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        self.0
            .purposes
            .lock()
            .unwrap()
            .push(header("x-vault-purpose"));
        self.0
            .deadlines
            .lock()
            .unwrap()
            .push(header("grpc-timeout"));
        if header("authorization").as_deref() != Some(&format!("Bearer {TOKEN}")) {
            return Err(Status::unauthenticated("unknown token"));
        }
        Ok(())
    }

    fn schema(&self, collection: &str) -> Result<pb::Collection, Status> {
        self.0
            .collections
            .lock()
            .unwrap()
            .get(collection)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("collection `{collection}`")))
    }

    fn validate(&self, record: &pb::Record) -> Result<(), Status> {
        let schema = self.schema(&record.collection)?;
        for name in record.fields.keys() {
            if !schema.fields.iter().any(|f| &f.name == name) {
                return Err(Status::invalid_argument(format!("unknown field `{name}`")));
            }
        }
        Ok(())
    }

    fn project(record: &pb::Record, fields: &[String]) -> pb::Record {
        let mut record = record.clone();
        if !fields.is_empty() {
            record.fields.retain(|name, _| fields.contains(name));
        }
        record
    }
}

#[tonic::async_trait]
impl VaultService for Mock {
    async fn create_collection(
        &self,
        request: Request<pb::CreateCollectionRequest>,
    ) -> Result<Response<pb::CreateCollectionResponse>, Status> {
        self.check(&request)?;
        let mut collection = request
            .into_inner()
            .collection
            .ok_or_else(|| Status::invalid_argument("no collection"))?;
        if collection.region.is_empty() {
            collection.region = "eu".into();
        } else if collection.region != "eu" {
            return Err(Status::failed_precondition("this vault is in eu"));
        }
        let mut collections = self.0.collections.lock().unwrap();
        if collections.contains_key(&collection.name) {
            return Err(Status::already_exists(format!(
                "collection `{}`",
                collection.name
            )));
        }
        collections.insert(collection.name.clone(), collection.clone());
        Ok(Response::new(pb::CreateCollectionResponse {
            collection: Some(collection),
        }))
    }

    async fn get_collection(
        &self,
        request: Request<pb::GetCollectionRequest>,
    ) -> Result<Response<pb::GetCollectionResponse>, Status> {
        self.check(&request)?;
        let collection = self.schema(&request.get_ref().name)?;
        Ok(Response::new(pb::GetCollectionResponse {
            collection: Some(collection),
        }))
    }

    async fn list_collections(
        &self,
        request: Request<pb::ListCollectionsRequest>,
    ) -> Result<Response<pb::ListCollectionsResponse>, Status> {
        self.check(&request)?;
        let collections = self
            .0
            .collections
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect();
        Ok(Response::new(pb::ListCollectionsResponse { collections }))
    }

    async fn put_record(
        &self,
        request: Request<pb::PutRecordRequest>,
    ) -> Result<Response<pb::PutRecordResponse>, Status> {
        self.check(&request)?;
        let record = request
            .into_inner()
            .record
            .ok_or_else(|| Status::invalid_argument("no record"))?;
        self.validate(&record)?;
        self.0
            .records
            .lock()
            .unwrap()
            .insert((record.collection.clone(), record.id.clone()), record);
        Ok(Response::new(pb::PutRecordResponse {}))
    }

    async fn get_record(
        &self,
        request: Request<pb::GetRecordRequest>,
    ) -> Result<Response<pb::GetRecordResponse>, Status> {
        self.check(&request)?;
        let request = request.into_inner();
        match request.id.as_str() {
            "tampered" => return Err(Status::data_loss("")),
            "slow" => tokio::time::sleep(Duration::from_secs(3)).await,
            "broken" => {
                return Ok(Response::new(pb::GetRecordResponse {
                    record: Some(pb::Record {
                        collection: request.collection,
                        id: request.id,
                        subject_id: "s".into(),
                        fields: [("email".to_owned(), pb::Value { kind: None })].into(),
                    }),
                }))
            }
            _ => {}
        }
        self.schema(&request.collection)?;
        let records = self.0.records.lock().unwrap();
        let record = records
            .get(&(request.collection.clone(), request.id.clone()))
            .ok_or_else(|| {
                Status::not_found(format!("record {}/{}", request.collection, request.id))
            })?;
        Ok(Response::new(pb::GetRecordResponse {
            record: Some(Self::project(record, &request.fields)),
        }))
    }

    async fn batch_put_records(
        &self,
        request: Request<pb::BatchPutRecordsRequest>,
    ) -> Result<Response<pb::BatchPutRecordsResponse>, Status> {
        self.check(&request)?;
        let records = request.into_inner().records;
        if records.len() > 3 {
            return Err(Status::resource_exhausted("at most 3 records per batch"));
        }
        for record in &records {
            self.validate(record)?;
        }
        let written = u32::try_from(records.len()).unwrap();
        let mut stored = self.0.records.lock().unwrap();
        for record in records {
            stored.insert((record.collection.clone(), record.id.clone()), record);
        }
        Ok(Response::new(pb::BatchPutRecordsResponse { written }))
    }

    async fn batch_get_records(
        &self,
        request: Request<pb::BatchGetRecordsRequest>,
    ) -> Result<Response<pb::BatchGetRecordsResponse>, Status> {
        self.check(&request)?;
        let request = request.into_inner();
        self.schema(&request.collection)?;
        let stored = self.0.records.lock().unwrap();
        let mut response = pb::BatchGetRecordsResponse::default();
        for id in request.ids {
            match stored.get(&(request.collection.clone(), id.clone())) {
                Some(record) => response
                    .records
                    .push(Self::project(record, &request.fields)),
                None => response.missing_ids.push(id),
            }
        }
        Ok(Response::new(response))
    }

    async fn delete_record(
        &self,
        request: Request<pb::DeleteRecordRequest>,
    ) -> Result<Response<pb::DeleteRecordResponse>, Status> {
        self.check(&request)?;
        let request = request.into_inner();
        let deleted = self
            .0
            .records
            .lock()
            .unwrap()
            .remove(&(request.collection, request.id))
            .is_some();
        Ok(Response::new(pb::DeleteRecordResponse { deleted }))
    }
}

fn users() -> Collection {
    Collection::new("users")
        .description("People")
        .field(
            FieldSchema::new("email", FieldType::String, DataCategory::Contact)
                .indexed()
                .masked(1, 4),
        )
        .field(FieldSchema::new(
            "name",
            FieldType::String,
            DataCategory::Identity,
        ))
        .field(FieldSchema::new(
            "phone",
            FieldType::String,
            DataCategory::Contact,
        ))
        .field(FieldSchema::new(
            "birth_date",
            FieldType::Timestamp,
            DataCategory::Identity,
        ))
        .field(FieldSchema::new(
            "country",
            FieldType::String,
            DataCategory::Location,
        ))
        .field(FieldSchema::new(
            "visits",
            FieldType::Int64,
            DataCategory::Behavioural,
        ))
        .field(FieldSchema::new(
            "score",
            FieldType::Double,
            DataCategory::Other,
        ))
        .field(FieldSchema::new(
            "vip",
            FieldType::Bool,
            DataCategory::Other,
        ))
        .field(FieldSchema::new(
            "photo",
            FieldType::Bytes,
            DataCategory::Special,
        ))
}

/// Starts a mock vault with the `users` collection seeded.
async fn start() -> (SocketAddr, Arc<State>) {
    let state = Arc::new(State::default());
    let mut seeded: pb::Collection = users().into();
    seeded.region = "eu".into();
    state
        .collections
        .lock()
        .unwrap()
        .insert("users".into(), seeded);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = VaultServiceServer::new(Mock(state.clone()));
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, state)
}

async fn client(addr: SocketAddr) -> VaultClient {
    VaultClient::builder(format!("http://{addr}"))
        .token(TOKEN)
        .purpose("testing")
        .connect()
        .await
        .unwrap()
}

fn ada(id: &str) -> Record {
    Record::new("users", id, "subject-ada")
        .with("email", "ada@example.eu")
        .with("name", "Ada Lovelace")
        .with("birth_date", "1815-12-10".parse::<Timestamp>().unwrap())
        .with("visits", 3i64)
        .with("score", 0.5)
        .with("vip", true)
        .with("photo", vec![0u8, 1, 2, 255])
}

#[tokio::test]
async fn records_round_trip() {
    let (addr, state) = start().await;
    // A bare host:port gets http://.
    let vault = VaultClient::connect(addr.to_string(), TOKEN).await.unwrap();

    let record = ada("u1");
    vault.put(&record).await.unwrap();
    assert_eq!(vault.get("users", "u1").await.unwrap(), record);

    let projected = vault
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

    let written = vault
        .put_many(&[ada("u2"), ada("u3").with("country", "GB")])
        .await
        .unwrap();
    assert_eq!(written, 2);
    let batch = vault
        .get_many("users", &["u3", "nobody", "u1"], &["country"])
        .await
        .unwrap();
    assert_eq!(
        batch
            .records
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        ["u3", "u1"]
    );
    assert_eq!(batch.records[0].get("country"), Some(&Value::from("GB")));
    assert!(batch.records[1].fields.is_empty());
    assert_eq!(batch.missing_ids, ["nobody"]);

    assert!(vault.delete("users", "u1").await.unwrap());
    assert!(!vault.delete("users", "u1").await.unwrap());
    assert!(matches!(
        vault.get("users", "u1").await,
        Err(Error::NotFound(_))
    ));

    // Every call carried a deadline; this client set no purpose.
    assert!(state.deadlines.lock().unwrap().iter().all(Option::is_some));
    assert!(state.purposes.lock().unwrap().iter().all(Option::is_none));
}

#[tokio::test]
async fn collections() {
    let (addr, _state) = start().await;
    let vault = client(addr).await;

    let orders = Collection::new("orders")
        .description("Orders")
        .field(FieldSchema::new(
            "total",
            FieldType::Double,
            DataCategory::Financial,
        ));
    let created = vault.create_collection(&orders).await.unwrap();
    assert_eq!(created.region, "eu");
    assert_eq!(created.fields, orders.fields);
    assert!(matches!(
        vault.create_collection(&orders).await,
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        vault
            .create_collection(&Collection::new("us_only").region("us"))
            .await,
        Err(Error::FailedPrecondition(_))
    ));

    let names: Vec<String> = vault
        .collections()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["orders", "users"]);
    let users_back = vault.collection("users").await.unwrap();
    assert_eq!(users_back.fields, users().fields);
    assert!(matches!(
        vault.collection("nope").await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn metadata_and_errors() {
    let (addr, state) = start().await;
    let vault = client(addr).await;

    vault.collections().await.unwrap();
    assert_eq!(
        state
            .purposes
            .lock()
            .unwrap()
            .last()
            .cloned()
            .flatten()
            .as_deref(),
        Some("testing")
    );
    let billing = vault.with_purpose(Some("billing")).unwrap();
    billing.collections().await.unwrap();
    assert_eq!(
        state
            .purposes
            .lock()
            .unwrap()
            .last()
            .cloned()
            .flatten()
            .as_deref(),
        Some("billing")
    );

    let stranger = VaultClient::connect(format!("http://{addr}"), "wrong")
        .await
        .unwrap();
    assert!(matches!(
        stranger.collections().await,
        Err(Error::Unauthenticated(_))
    ));

    let bad = Record::new("users", "x", "s").with("shoe_size", 44i64);
    assert!(
        matches!(vault.put(&bad).await, Err(Error::InvalidInput(m)) if m.contains("shoe_size"))
    );
    let many: Vec<Record> = (0..4).map(|i| ada(&format!("b{i}"))).collect();
    assert!(matches!(
        vault.put_many(&many).await,
        Err(Error::TooLarge(_))
    ));

    let err = vault.get("users", "tampered").await.unwrap_err();
    assert!(matches!(err, Error::Integrity));
    assert_eq!(
        err.to_string(),
        "integrity check failed: stored data was tampered with or moved"
    );
    assert!(matches!(
        vault.get("users", "broken").await,
        Err(Error::Protocol(m)) if m.contains("email")
    ));

    let impatient = vault.with_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    assert!(matches!(
        impatient.get("users", "slow").await,
        Err(Error::Timeout)
    ));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn unreachable_vaults() {
    // Bind and drop a listener to find a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    assert!(matches!(
        VaultClient::connect(addr.as_str(), TOKEN).await,
        Err(Error::Connect(_))
    ));
    let lazy = VaultClient::builder(addr.as_str())
        .token(TOKEN)
        .connect_lazy()
        .unwrap();
    match lazy.collections().await {
        Err(Error::Connect(message)) => assert!(!message.is_empty()),
        other => panic!("{other:?}"),
    }
}

/// Runs vaultctl with `args` against the vault at `addr`.
async fn vaultctl(
    addr: SocketAddr,
    token: Option<&str>,
    args: &[&str],
    stdin: Option<&str>,
) -> Output {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let token = token.map(str::to_owned);
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let mut command = Command::new(env!("CARGO_BIN_EXE_vaultctl"));
        command
            .args(&args)
            .env("VAULT_ADDR", format!("http://{addr}"))
            .env_remove("VAULT_TOKEN")
            .env_remove("VAULT_PURPOSE")
            .env_remove("VAULT_TIMEOUT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(token) = token {
            command.env("VAULT_TOKEN", token);
        }
        let mut child = command.spawn().unwrap();
        let mut pipe = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            pipe.write_all(text.as_bytes()).unwrap();
        }
        drop(pipe);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn vaultctl_end_to_end() {
    let (addr, _state) = start().await;
    let t = Some(TOKEN);

    let data = r#"{"email": "ada@example.eu", "birth_date": "1815-12-10T00:00:00Z",
                   "visits": 3, "score": 0.5, "vip": true, "photo": "AAEC/w=="}"#;
    let out = vaultctl(
        addr,
        t,
        &["put", "users", "u1", "--subject", "s1", "--data", data],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "stored users/u1\n");

    let out = vaultctl(addr, t, &["--json", "get", "users", "u1"], None).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let got: Json = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        got,
        json!({
            "collection": "users", "id": "u1", "subject_id": "s1",
            "fields": {"email": "ada@example.eu", "birth_date": "1815-12-10T00:00:00Z",
                       "visits": 3, "score": 0.5, "vip": true, "photo": "AAEC/w=="}
        })
    );

    let out = vaultctl(
        addr,
        t,
        &["get", "users", "u1", "--fields", "vip,email"],
        None,
    )
    .await;
    assert_eq!(
        stdout(&out),
        "users/u1 (subject s1)\nemail: ada@example.eu\nvip: true\n"
    );

    // --data - reads stdin.
    let out = vaultctl(
        addr,
        t,
        &[
            "--json",
            "put",
            "users",
            "u2",
            "--subject",
            "s2",
            "--data",
            "-",
        ],
        Some(r#"{"visits": 1715000000}"#),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let put: Json = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(put["stored"], json!(true));

    // A type mismatch names the field and type, not the value.
    let out = vaultctl(
        addr,
        t,
        &[
            "--json",
            "put",
            "users",
            "u3",
            "--subject",
            "s3",
            "--data",
            r#"{"visits": "very-secret"}"#,
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: field `visits`: expected an int64 (a JSON integer), got a string\n"
    );
    assert!(!stdout(&out).contains("very-secret"));
    let err: Json = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(err["error"]["kind"], json!("invalid_input"));

    let out = vaultctl(addr, t, &["--json", "delete", "users", "u1"], None).await;
    assert_eq!(stdout(&out), "{\"deleted\":true}\n");
    let out = vaultctl(addr, t, &["delete", "users", "u1"], None).await;
    assert_eq!(stdout(&out), "not found: users/u1\n");
    assert!(out.status.success());

    let out = vaultctl(addr, t, &["--json", "get", "users", "u1"], None).await;
    assert_eq!(out.status.code(), Some(1));
    let err: Json = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(err["error"]["kind"], json!("not_found"));
    assert!(stderr(&out).starts_with("error: not found"));
    assert_eq!(stderr(&out).lines().count(), 1);

    let out = vaultctl(addr, t, &["get", "users", "tampered"], None).await;
    assert_eq!(
        stderr(&out),
        "error: integrity check failed: stored data was tampered with or moved\n"
    );

    // Collections.
    let out = vaultctl(
        addr,
        t,
        &[
            "collection",
            "create",
            "orders",
            "--field",
            "total:double:financial",
            "--field",
            "card:string:financial:mask=0,4",
            "--description",
            "Orders",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "created collection orders (region eu, 2 fields)\n"
    );
    let out = vaultctl(addr, t, &["--json", "collection", "show", "orders"], None).await;
    let shown: Json = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        shown,
        json!({"name": "orders", "region": "eu", "description": "Orders", "fields": [
            {"name": "total", "type": "double", "category": "financial", "indexed": false},
            {"name": "card", "type": "string", "category": "financial", "indexed": false,
             "mask": {"keep_first": 0, "keep_last": 4}}
        ]})
    );
    let out = vaultctl(addr, t, &["collection", "list"], None).await;
    assert!(stdout(&out).contains("orders"));
    assert!(stdout(&out).contains("users"));

    // Usage errors exit 2; a wrong token exits 1 and is never printed.
    let out = vaultctl(
        addr,
        t,
        &["collection", "create", "x", "--field", "a:text:other"],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    let out = vaultctl(addr, None, &["--json", "collection", "list"], None).await;
    assert_eq!(out.status.code(), Some(2));
    let err: Json = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(err["error"]["kind"], json!("usage"));
    let out = vaultctl(
        addr,
        Some("not-the-token-xyz"),
        &["--json", "collection", "list"],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err: Json = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(err["error"]["kind"], json!("unauthenticated"));
    assert!(!stdout(&out).contains("not-the-token-xyz"));
    assert!(!stderr(&out).contains("not-the-token-xyz"));
}
