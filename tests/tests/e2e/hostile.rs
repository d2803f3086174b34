//! A hostile client: thousands of malformed, truncated, oversized and
//! wrongly-typed gRPC messages and bad metadata, sent as raw HTTP/2 (the
//! `h2` crate, not tonic's client) to the `vault-server` binary. Every case
//! must get the gRPC status SECURITY.md promises ("Hostile clients"; see
//! [`allowed`]), the server must not panic (its stderr is read), and its
//! health check must stay SERVING throughout.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpStream;
use tonic_health::pb::health_check_response::ServingStatus;
use vault_proto::v1 as pb;
use vault_tests::ChildVault;

const TOKEN: &str = "hostile-test-token";
const CASES: usize = 3000;
/// Not a gRPC code: a follow stream left open (then cancelled).
const STREAMING: i32 = -1;

/// Methods any authenticated body may reach: none of them changes custody
/// state (a well-formed `Seal` from the root token would seal the vault,
/// which is its job, not a fault).
const SAFE_METHODS: &[&str] = &[
    "/vault.v1.VaultService/CreateCollection",
    "/vault.v1.VaultService/GetCollection",
    "/vault.v1.VaultService/ListCollections",
    "/vault.v1.VaultService/PutRecord",
    "/vault.v1.VaultService/GetRecord",
    "/vault.v1.VaultService/BatchPutRecords",
    "/vault.v1.VaultService/BatchGetRecords",
    "/vault.v1.VaultService/DeleteRecord",
    "/vault.v1.OperatorService/Status",
    "/vault.v1.OperatorService/RewrapStatus",
    "/vault.v1.OperatorService/ReindexStatus",
    "/vault.v1.OperatorService/ListRootKeys",
    "/vault.v1.SubjectService/AccessLedger",
    "/vault.v1.AdminService/CheckPolicy",
    "/vault.v1.AuditService/Events",
    "/vault.v1.AuditService/Follow",
    "/vault.v1.AuditService/Checkpoints",
    "/vault.v1.AuditService/InclusionProof",
    "/vault.v1.AuditService/ConsistencyProof",
    "/vault.v1.AuditService/PublicKey",
    "/grpc.health.v1.Health/Check",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
];

/// Methods sent only without valid credentials: they must be refused
/// before their body matters.
const GUARDED_METHODS: &[&str] = &[
    "/vault.v1.OperatorService/Init",
    "/vault.v1.OperatorService/Unseal",
    "/vault.v1.OperatorService/Seal",
    "/vault.v1.OperatorService/RotateRootKey",
    "/vault.v1.OperatorService/RotateIndexKey",
    "/vault.v1.OperatorService/RetireRootKey",
    "/vault.v1.OperatorService/DestroyRootKey",
    "/vault.v1.OperatorService/RotateSubjectKey",
    "/vault.v1.OperatorService/Rekey",
    "/vault.v1.SubjectService/EraseSubject",
    "/vault.v1.AdminService/ReloadPolicy",
];

const UNKNOWN_METHODS: &[&str] = &[
    "/vault.v1.VaultService/NoSuchMethod",
    "/vault.v2.VaultService/GetRecord",
    "/",
    "/vault.v1.VaultService/",
    "/%00/%ff",
    "/vault.v1.VaultService/GetRecord/extra",
];

/// Well-formed messages of several types: sent to other methods they are
/// wrongly typed, and they are the seeds of the mutations.
fn seeds() -> Vec<Vec<u8>> {
    let record = pb::Record {
        collection: "users".into(),
        id: "hostile-1".into(),
        subject_id: "subject-1".into(),
        fields: [(
            "email".to_owned(),
            pb::Value {
                kind: Some(pb::value::Kind::StringValue("a@example.eu".into())),
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    vec![
        pb::PutRecordRequest {
            record: Some(record.clone()),
        }
        .encode_to_vec(),
        pb::BatchPutRecordsRequest {
            records: vec![record.clone(), record],
        }
        .encode_to_vec(),
        pb::GetRecordRequest {
            collection: "users".into(),
            id: "hostile-1".into(),
            fields: vec!["email".into()],
        }
        .encode_to_vec(),
        pb::BatchGetRecordsRequest {
            collection: "users".into(),
            ids: vec!["hostile-1".into(), "x".repeat(300)],
            fields: vec![],
        }
        .encode_to_vec(),
        pb::AuditEventsRequest {
            from: u64::MAX,
            limit: u32::MAX,
        }
        .encode_to_vec(),
        Vec::new(),
    ]
}

/// A protobuf-ish body: a seed, mutated.
fn message(rng: &mut StdRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut m = seeds[rng.gen_range(0..seeds.len())].clone();
    match rng.gen_range(0..8) {
        0 => {}
        1 if !m.is_empty() => {
            let at = rng.gen_range(0..m.len());
            m.truncate(at);
        }
        2 if !m.is_empty() => {
            for _ in 0..rng.gen_range(1..8) {
                let at = rng.gen_range(0..m.len());
                m[at] = rng.gen();
            }
        }
        3 => {
            let n = rng.gen_range(0..64);
            m = (0..n).map(|_| rng.gen()).collect();
        }
        4 => {
            // A field with a wrong wire type, or a length running past
            // the end, or a varint that never ends.
            let extra: &[&[u8]] = &[
                &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
                &[0x0d, 1, 2],
                &[
                    0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ],
                &[0x0f],
                &[0x12, 0x05, 0xff, 0xfe, 0xfd, 0xfc, 0xfb],
                &[0x22, 0x02, 0x0a, 0x7f],
            ];
            m.extend_from_slice(extra[rng.gen_range(0..extra.len())]);
        }
        5 => {
            // Deep nesting: length-delimited field 4 (map entries) inside
            // itself.
            let mut inner = vec![0x0a, 0x00];
            for _ in 0..rng.gen_range(10..200) {
                let mut outer = vec![0x22];
                put_varint(&mut outer, inner.len() as u64);
                outer.extend_from_slice(&inner);
                inner = outer;
            }
            m = inner;
        }
        6 => {
            // Invalid UTF-8 in a string field.
            m.extend_from_slice(&[0x0a, 0x03, 0xc3, 0x28, 0xff]);
        }
        _ => m.extend(std::iter::repeat_n(0u8, rng.gen_range(0..32))),
    }
    m
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// How a request body is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    NoFrame,
    TruncatedHeader,
    ShortFrame,
    CompressedFlag,
    UnknownFlag,
    Length4GiB,
    Oversized,
    Announces64MiB,
    TwoMessages,
    TrailingBytes,
    Mutated,
}

impl Shape {
    fn what(self) -> &'static str {
        match self {
            Shape::NoFrame => "no frame",
            Shape::TruncatedHeader => "a truncated frame header",
            Shape::ShortFrame => "a frame shorter than its length",
            Shape::CompressedFlag => "the compressed flag, no compression",
            Shape::UnknownFlag => "an unknown flag",
            Shape::Length4GiB => "a 4 GiB length",
            Shape::Oversized => "an oversized message",
            Shape::Announces64MiB => "a frame announcing 64 MiB",
            Shape::TwoMessages => "two messages to a unary method",
            Shape::TrailingBytes => "trailing bytes after the message",
            Shape::Mutated => "a mutated message",
        }
    }
}

/// A request body: gRPC frames, well or badly made, how it was made, and
/// the message its frames carry.
struct Body {
    bytes: Vec<u8>,
    shape: Shape,
    message: Vec<u8>,
}

fn body(rng: &mut StdRng, seeds: &[Vec<u8>]) -> Body {
    let frame = |flag: u8, len: u32, payload: &[u8]| {
        let mut b = vec![flag];
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        b
    };
    let m = message(rng, seeds);
    let len = m.len() as u32;
    let (bytes, shape) = match rng.gen_range(0..12) {
        0 => (Vec::new(), Shape::NoFrame),
        1 => {
            let f = frame(0, len, &m);
            let cut = rng.gen_range(1..5.min(f.len()));
            (f[..cut].to_vec(), Shape::TruncatedHeader)
        }
        2 => (
            frame(0, len + rng.gen_range(1..1000), &m),
            Shape::ShortFrame,
        ),
        3 => (frame(1, len, &m), Shape::CompressedFlag),
        4 => (frame(rng.gen_range(2..=255), len, &m), Shape::UnknownFlag),
        5 => (frame(0, u32::MAX, &m), Shape::Length4GiB),
        6 if rng.gen_ratio(1, 10) => {
            // Over the server's message limit (8 MiB for the data plane,
            // tonic's 4 MiB elsewhere), sent whole.
            let big = vec![0x0a; 9 * 1024 * 1024];
            (frame(0, big.len() as u32, &big), Shape::Oversized)
        }
        6 => (frame(0, 64 * 1024 * 1024, &m), Shape::Announces64MiB),
        7 => {
            let mut b = frame(0, len, &m);
            b.extend(frame(0, len, &m));
            (b, Shape::TwoMessages)
        }
        8 => {
            let mut b = frame(0, len, &m);
            b.extend((0..rng.gen_range(1..5)).map(|_| rng.gen::<u8>()));
            (b, Shape::TrailingBytes)
        }
        _ => (frame(0, len, &m), Shape::Mutated),
    };
    Body {
        bytes,
        shape,
        message: m,
    }
}

/// Metadata: mostly valid credentials, sometimes bad ones.
struct Meta {
    headers: Vec<(String, Vec<u8>)>,
    content_type: Option<&'static str>,
    valid_credentials: bool,
    /// A purpose the interceptor refuses (not ASCII, too long).
    bad_purpose: bool,
    /// `grpc-encoding: gzip`, which the server does not accept.
    gzip: bool,
    what: &'static str,
}

fn meta(rng: &mut StdRng) -> Meta {
    let auth = format!("Bearer {TOKEN}").into_bytes();
    let purpose = b"hostile-testing".to_vec();
    let mut m = Meta {
        headers: vec![
            ("authorization".into(), auth),
            ("x-vault-purpose".into(), purpose),
        ],
        content_type: Some("application/grpc"),
        valid_credentials: true,
        bad_purpose: false,
        gzip: false,
        what: "valid metadata",
    };
    match rng.gen_range(0..14) {
        0 => {
            m.headers.retain(|(k, _)| k != "authorization");
            m.valid_credentials = false;
            m.what = "no token";
        }
        1 => {
            m.headers[0].1 = b"Bearer wrong-token".to_vec();
            m.valid_credentials = false;
            m.what = "a wrong token";
        }
        2 => {
            m.headers[0].1 = vec![b'B', 0xff, 0xfe, b'x'];
            m.valid_credentials = false;
            m.what = "a token that is not ASCII";
        }
        3 => {
            m.headers[0].1 = format!("Bearer {}", "t".repeat(8000)).into_bytes();
            m.valid_credentials = false;
            m.what = "a huge token";
        }
        4 => {
            m.headers[0].1 = b"Basic dXNlcjpwYXNz".to_vec();
            m.valid_credentials = false;
            m.what = "another auth scheme";
        }
        5 => {
            m.headers[1].1 = vec![0xc3, 0x28, b'p'];
            m.bad_purpose = true;
            m.what = "a purpose that is not ASCII";
        }
        6 => {
            m.headers[1].1 = "p".repeat(10_000).into_bytes();
            m.bad_purpose = true;
            m.what = "a huge purpose";
        }
        7 => {
            m.headers.retain(|(k, _)| k != "x-vault-purpose");
            m.what = "no purpose";
        }
        8 => {
            m.headers.push(("grpc-timeout".into(), b"abc".to_vec()));
            m.what = "a malformed grpc-timeout";
        }
        9 => {
            m.headers.push(("grpc-encoding".into(), b"gzip".to_vec()));
            m.gzip = true;
            m.what = "an unsupported grpc-encoding";
        }
        10 => {
            m.content_type = None;
            m.what = "no content-type";
        }
        11 => {
            m.content_type = Some("application/json");
            m.what = "a JSON content-type";
        }
        12 => {
            m.headers
                .push(("x-vault-request-id".into(), b"forged".to_vec()));
            m.headers
                .push(("authorization".into(), b"Bearer second-token".to_vec()));
            m.what = "a forged request id and a second token";
        }
        _ => {}
    }
    m
}

const REFLECTION: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
const HEALTH: &str = "/grpc.health.v1.Health/Check";

/// Whether `message` decodes as the request of the unary or
/// server-streaming method at `path` (the server decodes it with the same
/// prost types); `None` for other paths.
fn request_decodes(path: &str, message: &[u8]) -> Option<bool> {
    fn ok<T: Message + Default>(m: &[u8]) -> Option<bool> {
        Some(T::decode(m).is_ok())
    }
    let method = path.strip_prefix("/vault.v1.").unwrap_or(path);
    match method {
        "VaultService/CreateCollection" => ok::<pb::CreateCollectionRequest>(message),
        "VaultService/GetCollection" => ok::<pb::GetCollectionRequest>(message),
        "VaultService/ListCollections" => ok::<pb::ListCollectionsRequest>(message),
        "VaultService/PutRecord" => ok::<pb::PutRecordRequest>(message),
        "VaultService/GetRecord" => ok::<pb::GetRecordRequest>(message),
        "VaultService/BatchPutRecords" => ok::<pb::BatchPutRecordsRequest>(message),
        "VaultService/BatchGetRecords" => ok::<pb::BatchGetRecordsRequest>(message),
        "VaultService/DeleteRecord" => ok::<pb::DeleteRecordRequest>(message),
        "OperatorService/Status" => ok::<pb::StatusRequest>(message),
        "OperatorService/RewrapStatus" => ok::<pb::RewrapStatusRequest>(message),
        "OperatorService/ReindexStatus" => ok::<pb::ReindexStatusRequest>(message),
        "OperatorService/ListRootKeys" => ok::<pb::ListRootKeysRequest>(message),
        "SubjectService/AccessLedger" => ok::<pb::AccessLedgerRequest>(message),
        "AdminService/CheckPolicy" => ok::<pb::CheckPolicyRequest>(message),
        "AuditService/Events" | "AuditService/Follow" => ok::<pb::AuditEventsRequest>(message),
        "AuditService/Checkpoints" => ok::<pb::CheckpointsRequest>(message),
        "AuditService/InclusionProof" => ok::<pb::InclusionProofRequest>(message),
        "AuditService/ConsistencyProof" => ok::<pb::ConsistencyProofRequest>(message),
        "AuditService/PublicKey" => ok::<pb::AuditPublicKeyRequest>(message),
        HEALTH => ok::<tonic_health::pb::HealthCheckRequest>(message),
        _ => None,
    }
}

/// The gRPC codes a case may get, and why, per SECURITY.md ("Hostile
/// clients"). The server answers in this order: the path (an unknown
/// method is UNIMPLEMENTED), then, on a `vault.v1` service, the
/// interceptor (bad credentials UNAUTHENTICATED, a malformed purpose
/// INVALID_ARGUMENT), then the request's `grpc-encoding` (gzip is not
/// accepted: UNIMPLEMENTED, as the gRPC compression spec asks), then the
/// body, read whole before any handler runs: a body that is not exactly
/// whole frames of messages that decode is INVALID_ARGUMENT, a frame over
/// the message limit OUT_OF_RANGE. Only a body of messages that decode
/// reaches a handler, whose answer depends on what it asks.
fn allowed(path: &str, m: &Meta, b: &Body) -> (&'static [i32], &'static str) {
    // What a handler may answer a request that decoded: OK, or a refusal
    // of what it asks (INVALID_ARGUMENT from validation, NOT_FOUND,
    // ALREADY_EXISTS, PERMISSION_DENIED from the policy or a missing
    // purpose, RESOURCE_EXHAUSTED from the limits, FAILED_PRECONDITION,
    // OUT_OF_RANGE for audit indices past the end), or a follow stream
    // left open. Never UNKNOWN, INTERNAL, DATA_LOSS, UNAVAILABLE,
    // UNIMPLEMENTED or UNAUTHENTICATED.
    const DECODED: &[i32] = &[0, 3, 5, 6, 7, 8, 9, 11, STREAMING];
    // Health answers OK, or NOT_FOUND for a service it does not know.
    const HEALTH_DECODED: &[i32] = &[0, 5];
    let vault_service = path.starts_with("/vault.v1.");
    if UNKNOWN_METHODS.contains(&path) {
        // A path under a vault.v1 service passes its interceptor first;
        // the router sends a service name with no method after it
        // (`/vault.v1.VaultService/`) to no service at all.
        let routed = vault_service && !path.ends_with('/');
        return match (routed, m.valid_credentials, m.bad_purpose) {
            (true, false, _) => (&[16], "an unknown vault.v1 method, bad credentials"),
            (true, true, true) => (&[3], "an unknown vault.v1 method, a malformed purpose"),
            _ => (&[12], "an unknown method"),
        };
    }
    if vault_service && !m.valid_credentials {
        return (&[16], "bad credentials on a vault.v1 method");
    }
    if vault_service && m.bad_purpose {
        return (&[3], "a malformed purpose on a vault.v1 method");
    }
    if m.gzip {
        return (&[12], "an unsupported grpc-encoding");
    }
    if path == REFLECTION {
        // A bidirectional stream: tonic's reflection service ends one with
        // a bad frame with OK (SECURITY.md says so). Only a whole first
        // message reaches it, and it ends the stream with its own refusal
        // of what the message asks: INVALID_ARGUMENT (no request in it),
        // NOT_FOUND (an unknown file or symbol).
        return match b.shape {
            Shape::TwoMessages | Shape::TrailingBytes | Shape::Mutated => {
                (&[0, 3, 5], "server reflection, a whole first message")
            }
            _ => (&[0], "server reflection, no whole message"),
        };
    }
    match b.shape {
        Shape::NoFrame
        | Shape::TruncatedHeader
        | Shape::ShortFrame
        | Shape::CompressedFlag
        | Shape::UnknownFlag
        | Shape::TrailingBytes => (&[3], "an unreadable body"),
        Shape::Length4GiB | Shape::Oversized | Shape::Announces64MiB => {
            (&[11], "an oversized body")
        }
        Shape::TwoMessages | Shape::Mutated => match request_decodes(path, &b.message) {
            Some(false) => (&[3], "a message that does not decode"),
            Some(true) if path == HEALTH => (HEALTH_DECODED, "a health check that decodes"),
            Some(true) => (DECODED, "a message that decodes"),
            None => panic!("no request type known for {path}"),
        },
    }
}

/// One HTTP/2 connection to the server.
async fn connect(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Sends one request and returns its gRPC status code, or why it has
/// none.
async fn send(
    conn: &mut h2::client::SendRequest<Bytes>,
    addr: std::net::SocketAddr,
    path: &str,
    m: &Meta,
    body: Vec<u8>,
) -> Result<i32, String> {
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("te", "trailers");
    if let Some(ct) = m.content_type {
        req = req.header("content-type", ct);
    }
    for (k, v) in &m.headers {
        req = req.header(k.as_str(), v.as_slice());
    }
    let req = req
        .body(())
        .map_err(|e| format!("building the request: {e}"))?;
    let ready = conn
        .clone()
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    *conn = ready;
    let (response, mut stream) = conn
        .send_request(req, false)
        .map_err(|e| format!("sending headers: {e}"))?;
    // The server may answer (and reset the stream) before it read all of
    // a large body: a refused send is not a fault.
    let _ = stream.send_data(Bytes::from(body), true);
    let response = response.await.map_err(|e| format!("no response: {e}"))?;
    let (parts, body) = response.into_parts();
    if parts.status != http::StatusCode::OK {
        return Err(format!("HTTP status {}", parts.status));
    }
    if let Some(code) = parts.headers.get("grpc-status") {
        return parse_code(code);
    }
    let end = status_at_end(body);
    if path.ends_with("/Follow") {
        // A well-formed follow streams until the client cancels it (a
        // deadline bounds only its opening): an open stream is its answer.
        return match tokio::time::timeout(Duration::from_millis(200), end).await {
            Ok(r) => r,
            Err(_) => Ok(STREAMING),
        };
    }
    end.await
}

/// Reads a response body to its end and returns the status its trailers
/// give.
async fn status_at_end(mut body: h2::RecvStream) -> Result<i32, String> {
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("reading the body: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|e| format!("reading trailers: {e}"))?
        .ok_or("no trailers")?;
    parse_code(trailers.get("grpc-status").ok_or("no grpc-status")?)
}

fn parse_code(v: &http::HeaderValue) -> Result<i32, String> {
    v.to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("a malformed grpc-status {v:?}"))
}

async fn serving(vault: &ChildVault) -> ServingStatus {
    crate::health(&vault.url(), "vault.v1.VaultService").await
}

#[tokio::test]
async fn hostile_raw_http2_requests_all_get_a_status_and_nothing_panics() {
    let seed: u64 = std::env::var("VAULT_HOSTILE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut vault = ChildVault::start(dir.path(), TOKEN).await;
    let addr = vault.addr;
    let seeds = seeds();
    let mut conn = connect(addr).await;
    let mut codes = std::collections::BTreeMap::<i32, usize>::new();
    let mut classes = std::collections::BTreeMap::<&str, usize>::new();
    for case in 0..CASES {
        let m = meta(&mut rng);
        let path = match rng.gen_range(0..10) {
            0 => UNKNOWN_METHODS[rng.gen_range(0..UNKNOWN_METHODS.len())],
            1 if !m.valid_credentials => GUARDED_METHODS[rng.gen_range(0..GUARDED_METHODS.len())],
            _ => SAFE_METHODS[rng.gen_range(0..SAFE_METHODS.len())],
        };
        let b = body(&mut rng, &seeds);
        let (expected, why) = allowed(path, &m, &b);
        let shape = b.shape.what();
        let sent = tokio::time::timeout(
            Duration::from_secs(30),
            send(&mut conn, addr, path, &m, b.bytes),
        )
        .await;
        let result = match sent {
            Ok(r) => r,
            Err(_) => Err("no answer in 30 s".into()),
        };
        match result {
            Ok(code) => {
                if std::env::var_os("VAULT_HOSTILE_SHOW").is_some() {
                    println!("{code}\t{path}\t{}\t{shape}\t{why}", m.what);
                }
                assert!(
                    expected.contains(&code),
                    "case {case} (VAULT_HOSTILE_SEED={seed}): {path} with {} and {shape}: \
                     got {code}, expected one of {expected:?} ({why})",
                    m.what
                );
                *codes.entry(code).or_default() += 1;
                *classes.entry(why).or_default() += 1;
            }
            Err(why) => panic!(
                "case {case} (VAULT_HOSTILE_SEED={seed}): {path} with {} and {shape}: {why}; \
                 server stderr:\n{}",
                m.what,
                vault.stderr()
            ),
        }
        // A case may have made the server close the connection (a
        // protocol error is answered with GOAWAY): open another.
        if conn.clone().ready().await.is_err() {
            conn = connect(addr).await;
        }
        if case % 250 == 0 {
            assert_eq!(serving(&vault).await, ServingStatus::Serving, "case {case}");
        }
    }
    assert_eq!(serving(&vault).await, ServingStatus::Serving);
    assert!(vault.is_running(), "the server exited");
    // Killed, then its stderr read to the end: a panic in the last cases
    // is seen too.
    let stderr = vault.kill().await;
    assert!(
        !stderr.contains("panicked"),
        "the server panicked (VAULT_HOSTILE_SEED={seed}):\n{stderr}"
    );
    println!(
        "hostile client: {CASES} cases (VAULT_HOSTILE_SEED={seed}), each with the status \
         SECURITY.md promises, 0 panics, health SERVING throughout; gRPC status codes seen \
         (-1: a follow stream left open): {codes:?}; cases by class: {classes:?}"
    );
    // Every class the promises are about was exercised.
    for class in [
        "bad credentials on a vault.v1 method",
        "an unreadable body",
        "an oversized body",
        "a message that does not decode",
        "a message that decodes",
    ] {
        assert!(
            classes.get(class).is_some_and(|n| *n >= 10),
            "too few cases of {class:?} (VAULT_HOSTILE_SEED={seed}): {classes:?}"
        );
    }
}
