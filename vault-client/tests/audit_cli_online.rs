//! The online `audit` commands and client calls against a fake
//! `AuditService` of this test's own (its own Merkle proofs and note
//! signing): `vaultctl audit public-key | export | proof | tail`, and the
//! client's refusal of malformed proof hashes.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::{json, Value as Json};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use vault_client::audit::{key_id, leaf_hash, root_from_leaf_hashes, Hash};
use vault_client::{Error, VaultClient};
use vault_proto::v1 as pb;
use vault_proto::v1::audit_service_server::{AuditService, AuditServiceServer};

const ORIGIN: &str = "vault/eu/test";

/// A log of `events` events with signed checkpoints at `sizes`.
struct FakeLog {
    events: Vec<Vec<u8>>,
    leaves: Vec<Hash>,
    notes: Vec<(u64, String)>,
    verifier_key: String,
    /// Answer proofs with a 31-byte hash.
    short_hashes: AtomicBool,
}

impl FakeLog {
    fn new(events: usize, sizes: &[u64], key: &SigningKey) -> Self {
        let mut prev = [0u8; 32];
        let events: Vec<Vec<u8>> = (0..events)
            .map(|i| {
                let event = json!({"v": 1, "index": i, "prev": hex::encode(prev),
                                   "operation": "read", "principal": "support"})
                .to_string()
                .into_bytes();
                prev = leaf_hash(&event);
                event
            })
            .collect();
        let leaves: Vec<Hash> = events.iter().map(|e| leaf_hash(e)).collect();
        let public = key.verifying_key().to_bytes();
        let id = key_id(ORIGIN, &public);
        let notes = sizes
            .iter()
            .map(|&size| {
                let body = format!(
                    "{ORIGIN}\n{size}\n{}\n",
                    BASE64.encode(root_from_leaf_hashes(&leaves[..size as usize]))
                );
                let mut signature = id.to_vec();
                signature.extend_from_slice(&key.sign(body.as_bytes()).to_bytes());
                let note = format!("{body}\n\u{2014} {ORIGIN} {}\n", BASE64.encode(signature));
                (size, note)
            })
            .collect();
        let mut encoded = vec![1u8];
        encoded.extend_from_slice(&public);
        let verifier_key = format!("{ORIGIN}+{}+{}", hex::encode(id), BASE64.encode(encoded));
        Self {
            events,
            leaves,
            notes,
            verifier_key,
            short_hashes: AtomicBool::new(false),
        }
    }

    fn answer(&self, hashes: Vec<Hash>) -> Response<pb::ProofResponse> {
        let mut hashes: Vec<Vec<u8>> = hashes.iter().map(|h| h.to_vec()).collect();
        if self.short_hashes.load(Ordering::SeqCst) {
            if let Some(first) = hashes.first_mut() {
                first.pop();
            }
        }
        Response::new(pb::ProofResponse { hashes })
    }
}

/// The largest power of two smaller than n (n > 1).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// RFC 6962 §2.1.1 audit path.
fn path(m: usize, d: &[Hash], out: &mut Vec<Hash>) {
    if d.len() <= 1 {
        return;
    }
    let k = split(d.len());
    if m < k {
        path(m, &d[..k], out);
        out.push(root_from_leaf_hashes(&d[k..]));
    } else {
        path(m - k, &d[k..], out);
        out.push(root_from_leaf_hashes(&d[..k]));
    }
}

/// RFC 6962 §2.1.2 consistency subproof.
fn subproof(m: usize, d: &[Hash], whole: bool, out: &mut Vec<Hash>) {
    if m == d.len() {
        if !whole {
            out.push(root_from_leaf_hashes(d));
        }
        return;
    }
    let k = split(d.len());
    if m <= k {
        subproof(m, &d[..k], whole, out);
        out.push(root_from_leaf_hashes(&d[k..]));
    } else {
        subproof(m - k, &d[k..], false, out);
        out.push(root_from_leaf_hashes(&d[..k]));
    }
}

#[derive(Clone)]
struct Fake(Arc<FakeLog>);

#[tonic::async_trait]
impl AuditService for Fake {
    type FollowStream = std::pin::Pin<
        Box<
            dyn tonic::codegen::tokio_stream::Stream<Item = Result<pb::AuditEventsResponse, Status>>
                + Send,
        >,
    >;

    type WatchStream = std::pin::Pin<
        Box<dyn tonic::codegen::tokio_stream::Stream<Item = Result<pb::Alert, Status>> + Send>,
    >;

    /// Not used by these tests.
    async fn watch(
        &self,
        _: Request<pb::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("no alerts here"))
    }

    /// Not used by these tests.
    async fn add_cosignature(
        &self,
        _: Request<pb::AddCosignatureRequest>,
    ) -> Result<Response<pb::AddCosignatureResponse>, Status> {
        Err(Status::unimplemented("no witnesses here"))
    }

    /// Not used by these tests.
    async fn report_refusal(
        &self,
        _: Request<pb::ReportRefusalRequest>,
    ) -> Result<Response<pb::ReportRefusalResponse>, Status> {
        Err(Status::unimplemented("no witnesses here"))
    }

    /// The events from `from` in pages of 7, then the stream ends (as when
    /// the vault shuts down).
    async fn follow(
        &self,
        req: Request<pb::AuditEventsRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let from = (req.into_inner().from as usize).min(self.0.events.len());
        let size = self.0.events.len() as u64;
        let pages: Vec<Result<pb::AuditEventsResponse, Status>> = self.0.events[from..]
            .chunks(7)
            .map(|c| {
                Ok(pb::AuditEventsResponse {
                    events: c.to_vec(),
                    tree_size: size,
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tonic::codegen::tokio_stream::iter(
            pages,
        ))))
    }

    async fn events(
        &self,
        req: Request<pb::AuditEventsRequest>,
    ) -> Result<Response<pb::AuditEventsResponse>, Status> {
        let r = req.into_inner();
        let from = (r.from as usize).min(self.0.events.len());
        let limit = r.limit.clamp(1, 1000) as usize;
        let events = self.0.events[from..].iter().take(limit).cloned().collect();
        Ok(Response::new(pb::AuditEventsResponse {
            events,
            tree_size: self.0.events.len() as u64,
        }))
    }

    async fn checkpoints(
        &self,
        req: Request<pb::CheckpointsRequest>,
    ) -> Result<Response<pb::CheckpointsResponse>, Status> {
        // Pages of two stored notes, then the current (last) one, as the
        // vault pages its own: the client must ask again.
        const PAGE: usize = 2;
        let from = req.into_inner().from_size;
        let mut checkpoints: Vec<String> = self
            .0
            .notes
            .iter()
            .filter(|(size, _)| *size >= from)
            .map(|(_, note)| note.clone())
            .collect();
        let current = self.0.notes.last().map(|(_, n)| n.clone());
        let more = checkpoints.len() > PAGE + 1;
        if more {
            checkpoints.truncate(PAGE);
            checkpoints.extend(current);
        }
        Ok(Response::new(pb::CheckpointsResponse { checkpoints, more }))
    }

    async fn inclusion_proof(
        &self,
        req: Request<pb::InclusionProofRequest>,
    ) -> Result<Response<pb::ProofResponse>, Status> {
        let r = req.into_inner();
        let leaves = self
            .0
            .leaves
            .get(..r.tree_size as usize)
            .filter(|_| r.index < r.tree_size)
            .ok_or_else(|| Status::invalid_argument("bad index or size"))?;
        let mut out = Vec::new();
        path(r.index as usize, leaves, &mut out);
        Ok(self.0.answer(out))
    }

    async fn consistency_proof(
        &self,
        req: Request<pb::ConsistencyProofRequest>,
    ) -> Result<Response<pb::ProofResponse>, Status> {
        let r = req.into_inner();
        let leaves = self
            .0
            .leaves
            .get(..r.new_size as usize)
            .filter(|_| r.old_size >= 1 && r.old_size <= r.new_size)
            .ok_or_else(|| Status::invalid_argument("bad sizes"))?;
        let mut out = Vec::new();
        subproof(r.old_size as usize, leaves, true, &mut out);
        Ok(self.0.answer(out))
    }

    async fn public_key(
        &self,
        _req: Request<pb::AuditPublicKeyRequest>,
    ) -> Result<Response<pb::AuditPublicKeyResponse>, Status> {
        Ok(Response::new(pb::AuditPublicKeyResponse {
            verifier_key: self.0.verifier_key.clone(),
            origin: ORIGIN.into(),
        }))
    }
}

/// Serves `log`; returns its address.
fn serve(log: Arc<FakeLog>) -> SocketAddr {
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuditServiceServer::new(Fake(log)))
            .serve_with_incoming(incoming),
    );
    addr
}

/// `vaultctl --addr ADDR --token t ARGS…`: (exit code, stdout, stderr).
async fn vaultctl(addr: SocketAddr, args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vaultctl"));
    command
        .args(["--addr", &format!("http://{addr}"), "--token", "t"])
        .args(args)
        .env_remove("VAULT_PURPOSE");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn export_then_verify_offline() {
    let key = SigningKey::from_bytes(&[9; 32]);
    // More than a page of events, and of checkpoints.
    let log = Arc::new(FakeLog::new(2345, &[5, 6, 700, 1000, 2000, 2345], &key));
    let addr = serve(log.clone());
    let dir = tempfile::tempdir().unwrap();

    let (code, out, err) = vaultctl(addr, &["audit", "public-key"]).await;
    assert_eq!((code, out.trim()), (0, log.verifier_key.as_str()), "{err}");
    let (code, out, _) = vaultctl(addr, &["audit", "public-key", "--json"]).await;
    assert_eq!(code, 0);
    let json: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(
        json,
        json!({"verifier_key": log.verifier_key, "origin": ORIGIN})
    );
    let key_file = dir.path().join("vault.pub");
    std::fs::write(&key_file, format!("{}\n", log.verifier_key)).unwrap();

    let export = dir.path().join("export");
    let (code, out, err) = vaultctl(addr, &["audit", "export", arg(&export)]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!(
            "exported 2345 events and 6 checkpoints to {}",
            export.display()
        )
    );
    let events = std::fs::read(export.join("events.jsonl")).unwrap();
    let expected: Vec<u8> = log
        .events
        .iter()
        .flat_map(|e| e.iter().copied().chain([b'\n']))
        .collect();
    assert_eq!(events, expected);
    assert_eq!(
        std::fs::read_to_string(export.join("checkpoints/000002.note")).unwrap(),
        log.notes[2].1
    );
    assert_eq!(
        std::fs::read_to_string(export.join("checkpoints/000005.note")).unwrap(),
        log.notes[5].1
    );
    let (code, out, err) = vaultctl(
        addr,
        &[
            "audit",
            "verify",
            arg(&export),
            "--public-key",
            arg(&key_file),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("valid: 2345 events, 6 checkpoints"),
        "{out}"
    );

    // Not into a non-empty directory; with --json, the counts.
    let (code, _, err) = vaultctl(addr, &["audit", "export", arg(&export)]).await;
    assert_eq!(code, 1);
    assert!(err.contains("is not empty"), "{err}");
    let again = dir.path().join("again");
    let (code, out, _) = vaultctl(addr, &["--json", "audit", "export", arg(&again)]).await;
    assert_eq!(code, 0);
    let json: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(
        json,
        json!({"events": 2345, "checkpoints": 6, "dir": again.to_str().unwrap()})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn proofs_and_tail() {
    let key = SigningKey::from_bytes(&[9; 32]);
    let log = Arc::new(FakeLog::new(37, &[6, 20, 37], &key));
    let addr = serve(log.clone());
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("vault.pub");
    std::fs::write(&key_file, &log.verifier_key).unwrap();
    let root = |size: usize| hex::encode(root_from_leaf_hashes(&log.leaves[..size]));

    for index in ["0", "19", "36"] {
        let (code, out, err) = vaultctl(addr, &["audit", "proof", index]).await;
        assert_eq!(code, 0, "{out}{err}");
        let mut lines = out.lines();
        assert_eq!(
            lines.next().unwrap(),
            format!(
                "event {index} is included in the tree of size 37 (root {})",
                root(37)
            )
        );
        assert_eq!(
            lines.next().unwrap(),
            "checkpoint verified with the key the server gave; pin it with --public-key"
        );
    }
    // Pinned, in an older checkpoint that the latest extends.
    let (code, out, err) = vaultctl(
        addr,
        &[
            "--json",
            "audit",
            "proof",
            "5",
            "--size",
            "20",
            "--public-key",
            arg(&key_file),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let json: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(json["included"], true);
    assert_eq!(json["tree_size"], 20);
    assert_eq!(json["root"], root(20));
    assert_eq!(json["key_pinned"], true);
    assert_eq!(json["extended_by"]["tree_size"], 37);

    // A pinned key that is not the vault's: exit 1, with the reason.
    let other = FakeLog::new(1, &[1], &SigningKey::from_bytes(&[3; 32]));
    let other_file = dir.path().join("other.pub");
    std::fs::write(&other_file, &other.verifier_key).unwrap();
    let (code, out, _) = vaultctl(
        addr,
        &["audit", "proof", "3", "--public-key", arg(&other_file)],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("event 3 is not shown to be included: the checkpoint of size 37"),
        "{out}"
    );
    // No such size, no such event.
    let (code, _, err) = vaultctl(addr, &["audit", "proof", "3", "--size", "7"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("no checkpoint of size 7; of that size or more: 20, 37"),
        "{err}"
    );
    let (code, _, err) = vaultctl(addr, &["audit", "proof", "37"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("there is no event 37: the log has 37 events"),
        "{err}"
    );

    // Tail: the last 20 by default, or from --from.
    let (code, out, err) = vaultctl(addr, &["audit", "tail"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 20);
    assert_eq!(lines[0].as_bytes(), log.events[17].as_slice());
    assert_eq!(lines[19].as_bytes(), log.events[36].as_slice());
    let (_, out, _) = vaultctl(addr, &["audit", "tail", "--from", "35"]).await;
    assert_eq!(out.lines().count(), 2);
    // --follow streams (one request): every event from --from, then the
    // vault's end of the stream is an error.
    let (code, out, err) = vaultctl(addr, &["audit", "tail", "--from", "20", "--follow"]).await;
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 17);
    assert_eq!(lines[16].as_bytes(), log.events[36].as_slice());
    assert!(err.contains("the vault ended the stream"), "{err}");

    // A hash of 31 bytes is a protocol error.
    log.short_hashes.store(true, Ordering::SeqCst);
    let (code, out, err) = vaultctl(addr, &["--json", "audit", "proof", "3"]).await;
    assert_eq!(code, 1);
    let json: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(json["error"]["kind"], "protocol", "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_calls() {
    let key = SigningKey::from_bytes(&[9; 32]);
    let log = Arc::new(FakeLog::new(13, &[13], &key));
    let addr = serve(log.clone());
    let vault = VaultClient::connect(format!("http://{addr}"), "t")
        .await
        .unwrap();

    let page = vault.audit_events(10, 1000).await.unwrap();
    assert_eq!((page.events.len(), page.tree_size), (3, 13));
    assert_eq!(page.events[0], log.events[10]);
    assert!(vault.audit_events(13, 5).await.unwrap().events.is_empty());
    assert_eq!(vault.audit_checkpoints(0).await.unwrap().len(), 1);
    assert_eq!(
        vault.audit_public_key().await.unwrap(),
        (log.verifier_key.clone(), ORIGIN.to_owned())
    );

    let proof = vault.audit_inclusion_proof(4, 13).await.unwrap();
    let root = root_from_leaf_hashes(&log.leaves);
    vault_client::audit::verify_inclusion(&log.leaves[4], 4, 13, &proof, &root).unwrap();
    let proof = vault.audit_consistency_proof(5, 13).await.unwrap();
    let old = root_from_leaf_hashes(&log.leaves[..5]);
    vault_client::audit::verify_consistency(5, 13, &proof, &old, &root).unwrap();
    assert!(matches!(
        vault.audit_inclusion_proof(13, 13).await,
        Err(Error::InvalidInput(_))
    ));

    log.short_hashes.store(true, Ordering::SeqCst);
    assert!(matches!(
        vault.audit_inclusion_proof(4, 13).await,
        Err(Error::Protocol(m)) if m == "hash 0 of the inclusion proof is 31 bytes, not 32"
    ));
    assert!(matches!(
        vault.audit_consistency_proof(5, 13).await,
        Err(Error::Protocol(m)) if m.contains("consistency proof is 31 bytes")
    ));
}
