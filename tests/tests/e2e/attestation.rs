//! The key release gate with Nitro Enclaves attestation: documents made
//! under a test root (this machine has no enclave), verified by the vault
//! against that root pinned. An approved document unseals; an unknown
//! measurement, a wrong region claim, an expired or re-used document, a
//! broken signature and a chain to another root are each refused with a
//! clear message and an audit event.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use vault_client::{Error, UnsealShare};
use vault_server::attest::nitro::testing::{Claims, TestNsm};
use vault_server::attest::nitro::NitroVerifier;
use vault_server::attest::{DocumentSource, Evidence, NitroEvidence};
use vault_server::vault::{OpenOptions, DEV_SHARE_FILE};
use vault_tests::TestVault;

use crate::user;

const APPROVED: [u8; 48] = [0xa1; 48];

/// What the test NSM does with the next request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Good,
    Pcr0([u8; 48]),
    Region(&'static str),
    Expired,
    Replay,
    BrokenSignature,
    OtherRoot,
}

struct Nsm {
    nsm: TestNsm,
    other: TestNsm,
    mode: Mutex<Mode>,
    last: Mutex<Vec<u8>>,
}

struct Source(Arc<Nsm>);

impl DocumentSource for Source {
    fn document(&self, nonce: &[u8], user_data: &[u8]) -> Result<Vec<u8>, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut claims = Claims {
            pcr0: APPROVED,
            timestamp_ms: now,
            nonce: nonce.to_vec(),
            user_data: user_data.to_vec(),
        };
        let mode = *self.0.mode.lock().unwrap();
        let mut last = self.0.last.lock().unwrap();
        let doc = match mode {
            Mode::Replay => return Ok(last.clone()),
            Mode::Good => self.0.nsm.document(&claims),
            Mode::Pcr0(pcr0) => {
                claims.pcr0 = pcr0;
                self.0.nsm.document(&claims)
            }
            Mode::Region(region) => {
                claims.user_data = format!("vault-region={region}").into_bytes();
                self.0.nsm.document(&claims)
            }
            Mode::Expired => {
                claims.timestamp_ms = now - 10 * 60 * 1000;
                self.0.nsm.document(&claims)
            }
            Mode::BrokenSignature => {
                let mut d = self.0.nsm.document(&claims);
                let n = d.len() - 1;
                d[n] ^= 1;
                d
            }
            Mode::OtherRoot => self.0.other.document(&claims),
        };
        *last = doc.clone();
        Ok(doc)
    }
}

#[tokio::test]
async fn an_approved_attested_enclave_unseals_and_every_other_document_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let nsm = Arc::new(Nsm {
        nsm: TestNsm::new("test nitro"),
        other: TestNsm::new("another"),
        mode: Mutex::new(Mode::Good),
        last: Mutex::new(Vec::new()),
    });
    let verifier = NitroVerifier::from_pem(&nsm.nsm.root_pem).unwrap();
    let mut opts = OpenOptions::dev(dir.path(), "eu".parse().unwrap());
    opts.evidence = Evidence::Nitro(Arc::new(NitroEvidence::new(
        verifier,
        Box::new(Source(Arc::clone(&nsm))),
    )));
    let vault = TestVault::start_dev_with(opts).await.unwrap();
    let custodian = vault.custodian().await;
    let share = UnsealShare::new(std::fs::read_to_string(dir.path().join(DEV_SHARE_FILE)).unwrap());
    let status = custodian.status().await.unwrap();
    assert_eq!(status.evidence, "nitro");
    assert!(!status.attested, "no document verified yet");
    assert_eq!(status.measurement, None);
    vault.client().await.put(&user("u1", "s1")).await.unwrap();

    // Approved: a fresh document for this region unseals.
    custodian.approve_build(&APPROVED).await.unwrap();
    custodian.seal().await.unwrap();
    assert!(!custodian.unseal(&share).await.unwrap().sealed);
    let status = custodian.status().await.unwrap();
    assert!(status.attested);
    assert_eq!(status.measurement, Some(APPROVED));
    assert_eq!(status.measurement_approved(), Some(true));
    let root = hex::encode(
        NitroVerifier::from_pem(&nsm.nsm.root_pem)
            .unwrap()
            .root_fingerprint(),
    );
    assert_eq!(
        status.attestation_identity.as_deref(),
        Some(format!("root sha256:{root}; enclave i-test-enc0").as_str())
    );
    assert_eq!(
        vault.client().await.get("users", "u1").await.unwrap(),
        user("u1", "s1")
    );

    let cases = [
        (Mode::Replay, "re-used"),
        (Mode::Pcr0([0x11; 48]), "unknown measurement"),
        (Mode::Region("us"), "wrong region claim"),
        (Mode::Expired, "has expired"),
        (Mode::BrokenSignature, "signature does not verify"),
        (Mode::OtherRoot, "does not lead to the pinned root"),
    ];
    custodian.seal().await.unwrap();
    for (mode, says) in cases {
        *nsm.mode.lock().unwrap() = mode;
        let err = custodian.unseal(&share).await.unwrap_err();
        assert!(
            matches!(&err, Error::FailedPrecondition(m) if m.contains("key release refused") && m.contains(says)),
            "{mode:?}: {err:?}"
        );
        assert!(custodian.status().await.unwrap().sealed, "{mode:?}");
        let events = vault.vault.audit_log().events(0, 10_000).unwrap();
        let last_gate = events
            .iter()
            .map(|e| serde_json::from_slice::<serde_json::Value>(e).unwrap())
            .rfind(|e| e["operation"] == "unseal")
            .expect("an unseal event");
        assert_eq!(last_gate["decision"], "failed", "{mode:?}");
        assert!(
            last_gate["detail"].as_str().unwrap().contains(says),
            "{mode:?}: {last_gate}"
        );
        let status = custodian.status().await.unwrap();
        if let Mode::Pcr0(pcr0) = mode {
            // Attested, not approved: the status shows it.
            assert!(status.attested);
            assert_eq!(status.measurement, Some(pcr0));
            assert_eq!(status.measurement_approved(), Some(false));
        } else {
            // A document that did not verify leaves nothing attested.
            assert!(!status.attested, "{mode:?}");
            assert_eq!(status.measurement, None, "{mode:?}");
        }
    }

    *nsm.mode.lock().unwrap() = Mode::Good;
    assert!(!custodian.unseal(&share).await.unwrap().sealed);
    assert_eq!(
        vault.client().await.get("users", "u1").await.unwrap(),
        user("u1", "s1")
    );
    drop(custodian);
    vault.stop().await;
}

/// The binary with `[attestation] evidence = "nitro"`: a program fetches
/// each document (here `test-nsm`, signing under a test root pinned with
/// `nitro_root_file`); an approved PCR0 unseals, another is refused.
#[tokio::test]
async fn the_binary_takes_its_documents_from_the_configured_command() {
    use super::binary::start_with_env;
    use super::seal::{client, config, CUSTODY};
    if vault_tests::skip_on_postgres("runs the binary over RocksDB") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nsm = TestNsm::new("command");
    nsm.save(dir.path()).unwrap();
    // The document command runs with an empty environment: what it needs
    // is in its arguments (the test NSM's folder, and the PCR0 to sign).
    let start = |pcr0: String, last: &'static str| {
        let cfg = config(
            dir.path(),
            &format!(
                "[attestation]\nevidence = \"nitro\"\n\
                 nitro_document_command = [{:?}, {:?}, {pcr0:?}]\nnitro_root_file = {:?}\n",
                env!("CARGO_BIN_EXE_test-nsm"),
                dir.path().display().to_string(),
                dir.path().join("root.pem").display().to_string()
            ),
        );
        async move { start_with_env(&["--config", &cfg], &[], last).await }
    };
    let approved = hex::encode([0xb2; 48]);

    let vault = start(approved, "vault is not initialised").await;
    let custodian = client(&vault.url, CUSTODY).await;
    let init = custodian.init(1, 1).await.unwrap();
    custodian.unseal(&init.shares[0]).await.unwrap();
    let status = custodian.status().await.unwrap();
    assert_eq!(status.evidence, "nitro");
    assert!(
        !status.attested,
        "no document asked for while no build is approved"
    );
    custodian.approve_build(&[0xb2; 48]).await.unwrap();
    custodian.seal().await.unwrap();
    assert!(!custodian.unseal(&init.shares[0]).await.unwrap().sealed);
    let status = custodian.status().await.unwrap();
    assert!(status.attested);
    assert_eq!(status.measurement, Some([0xb2; 48]));
    drop(custodian);
    vault.stop().await;

    // Another image: its document verifies, its PCR0 is not approved.
    let vault = start(hex::encode([0xc3; 48]), "vault is sealed").await;
    let custodian = client(&vault.url, CUSTODY).await;
    let err = custodian.unseal(&init.shares[0]).await.unwrap_err();
    assert!(
        matches!(&err, Error::FailedPrecondition(m) if m.contains("unknown measurement")
            && m.contains(&hex::encode([0xc3; 48]))),
        "{err:?}"
    );
    drop(custodian);
    vault.stop().await;

    // The command failing: refused, with its reason.
    let vault = start("not-hex".into(), "vault is sealed").await;
    let custodian = client(&vault.url, CUSTODY).await;
    let err = custodian.unseal(&init.shares[0]).await.unwrap_err();
    assert!(
        matches!(&err, Error::FailedPrecondition(m) if m.contains("PCR0 is not hex")),
        "{err:?}"
    );
    drop(custodian);
    vault.stop().await;
}
