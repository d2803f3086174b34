//! Keys anchored in the region: the PKCS#11 seal against a real SoftHSM2
//! token (the binary as a child process, each test with a token folder of
//! its own), moves between seals with M of N custodians, and the key
//! release gate over the approved builds.

use std::path::{Path, PathBuf};
use std::process::Command;

use vault_client::{Error, Record, VaultClient};

use super::binary::{config_file, start_with_env, token_entry, Started};
use super::vaultctl::vaultctl_at;
use crate::all_types;

const LIBRARY: &str = "/usr/lib/softhsm/libsofthsm2.so";
const LABEL: &str = "vault-eu";

/// A SoftHSM2 token folder of its own, with one token `vault-eu`.
struct SoftHsm {
    conf: PathBuf,
    pin_file: PathBuf,
}

impl SoftHsm {
    fn new(dir: &Path) -> SoftHsm {
        assert!(
            Path::new(LIBRARY).exists(),
            "SoftHSM2 is missing ({LIBRARY}): run scripts/prereqs (or apt-get install softhsm2)"
        );
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let pin_file = dir.join("hsm.pin");
        std::fs::write(&pin_file, "1234\n").unwrap();
        let hsm = SoftHsm { conf, pin_file };
        hsm.init_token();
        hsm
    }

    fn util(&self, args: &[&str]) -> String {
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &self.conf)
            .args(args)
            .output()
            .expect("softhsm2-util runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "softhsm2-util {args:?}: {text}");
        text
    }

    fn init_token(&self) {
        self.util(&[
            "--init-token",
            "--free",
            "--label",
            LABEL,
            "--pin",
            "1234",
            "--so-pin",
            "5678",
        ]);
    }

    /// Takes the token out (its folder moved aside), as an HSM unplugged.
    fn take_out(&self) {
        let (tokens, aside) = self.token_folders();
        std::fs::create_dir_all(&aside).unwrap();
        for entry in std::fs::read_dir(&tokens).unwrap() {
            let entry = entry.unwrap();
            std::fs::rename(entry.path(), aside.join(entry.file_name())).unwrap();
        }
    }

    /// Puts the token taken out back.
    fn put_back(&self) {
        let (tokens, aside) = self.token_folders();
        for entry in std::fs::read_dir(&aside).unwrap() {
            let entry = entry.unwrap();
            std::fs::rename(entry.path(), tokens.join(entry.file_name())).unwrap();
        }
    }

    fn token_folders(&self) -> (PathBuf, PathBuf) {
        let dir = self.conf.parent().unwrap();
        (dir.join("tokens"), dir.join("tokens-aside"))
    }

    /// Deletes the token: it and its keys are gone.
    fn delete_token(&self) {
        self.util(&["--delete-token", "--token", LABEL]);
    }

    fn env(&self) -> [(&'static str, &str); 1] {
        [("SOFTHSM2_CONF", self.conf.to_str().unwrap())]
    }

    fn seal_table(&self) -> String {
        format!(
            "[seal]\ntype = \"pkcs11\"\npkcs11_library = \"{LIBRARY}\"\ntoken_label = \"{LABEL}\"\n\
             pin_file = {:?}\n",
            self.pin_file.display().to_string()
        )
    }
}

pub(crate) const CUSTODY: &str = "custody-token";
const DATA: &str = "data-token";
const AUDIT: &str = "audit-token";

/// A production configuration (no dev mode) with a custodian, a data
/// service and an auditor, and `extra` tables.
pub(crate) fn config(dir: &Path, extra: &str) -> String {
    let tokens = [
        token_entry("keeper", CUSTODY, "[\"custodian\"]"),
        token_entry("svc", DATA, "[\"reader\", \"writer\", \"admin\"]"),
        token_entry("auditor", AUDIT, "[\"auditor\"]"),
    ]
    .concat();
    config_file(
        dir,
        "listen = \"127.0.0.1:0\"",
        &format!("{extra}\n{tokens}"),
    )
}

pub(crate) async fn client(url: &str, token: &str) -> VaultClient {
    VaultClient::connect(url.to_owned(), token)
        .await
        .unwrap()
        .with_purpose(Some(vault_tests::PURPOSE))
        .unwrap()
}

/// The audit events (JSON) of `operation`, oldest first.
async fn events(url: &str, operation: &str) -> Vec<serde_json::Value> {
    let auditor = client(url, AUDIT).await;
    let page = auditor.audit_events(0, 10_000).await.unwrap();
    page.events
        .iter()
        .map(|e| serde_json::from_slice::<serde_json::Value>(e).unwrap())
        .filter(|e| e["operation"] == operation)
        .collect()
}

/// The audit events of `operation` of a stopped vault, read from its
/// data folder (a vault that stays sealed serves no audit API).
fn stored_events(dir: &Path, operation: &str) -> Vec<serde_json::Value> {
    let store = std::sync::Arc::new(
        vault_server::storage::RocksStore::open(&dir.join("data/db"), &Default::default()).unwrap(),
    );
    let log = vault_server::audit::AuditLog::open(store).unwrap();
    log.events(0, 10_000)
        .unwrap()
        .iter()
        .map(|e| serde_json::from_slice::<serde_json::Value>(e).unwrap())
        .filter(|e| e["operation"] == operation)
        .collect()
}

/// A collection, and one record in it.
async fn write_one(url: &str) -> Record {
    let data = client(url, DATA).await;
    data.create_collection(&all_types("people")).await.unwrap();
    let record = Record::new("people", "r1", "s1")
        .with("s", "Ada Lovelace")
        .with("i", 1815i64);
    data.put(&record).await.unwrap();
    record
}

async fn read_back(url: &str, record: &Record) {
    let data = client(url, DATA).await;
    assert_eq!(&data.get("people", "r1").await.unwrap(), record);
}

fn line<'a>(started: &'a Started, prefix: &str) -> &'a str {
    started
        .lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in {:?}", started.lines))
}

/// Init under the PKCS#11 seal: the vault unseals itself, at init and at
/// every start, and its data reads back. The custodians' shares are
/// recovery shares that open nothing. The token removed (or replaced by
/// another of the same label), the vault starts sealed and says why, in
/// its output, its status and the audit log.
#[tokio::test]
async fn an_hsm_sealed_vault_unseals_itself_at_start_and_stays_sealed_without_its_token() {
    if vault_tests::skip_on_postgres("runs the binary over RocksDB") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsm::new(dir.path());
    let cfg = config(dir.path(), &hsm.seal_table());
    let args = ["--config", cfg.as_str()];

    let vault = start_with_env(&args, &hsm.env(), "vault is not initialised").await;
    let custodian = client(&vault.url, CUSTODY).await;
    let init = custodian.init(3, 2).await.unwrap();
    assert_eq!(init.shares.len(), 3);
    let status = custodian.status().await.unwrap();
    assert!(!status.sealed, "the HSM unsealed it at init: {status:?}");
    assert_eq!(status.seal, "pkcs11");
    let identity = status.seal_identity.clone().unwrap();
    assert!(
        identity.contains("token \"vault-eu\"") && identity.contains("key \"vault-unseal\""),
        "{identity}"
    );
    let record = write_one(&vault.url).await;
    // Shares open nothing: given while sealed, they are refused.
    custodian.seal().await.unwrap();
    let err = custodian.unseal(&init.shares[0]).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("recovery shares")),
        "{err:?}"
    );
    let p = custodian.unseal_with_hsm(false).await.unwrap();
    assert!(!p.sealed);
    read_back(&vault.url, &record).await;
    // One event for the init, saying the HSM unsealed the vault.
    let init_events = events(&vault.url, "init").await;
    let detail = init_events[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("PKCS#11 seal by token \"vault-eu\"")
            && detail.ends_with("unsealed by the HSM"),
        "{init_events:?}"
    );
    // Then the recovery share refused and the --hsm unseal: no unseal
    // event of the init's own.
    let unseals = events(&vault.url, "unseal").await;
    assert_eq!(unseals.len(), 2, "{unseals:?}");
    assert_eq!(unseals[0]["reason"], "invalid argument", "{unseals:?}");
    drop(custodian);
    vault.stop().await;

    // Restart: unsealed by the HSM, the same data.
    let vault = start_with_env(&args, &hsm.env(), "vault unsealed by the HSM").await;
    assert!(line(&vault, "vault unsealed by the HSM").contains(&identity));
    read_back(&vault.url, &record).await;
    let unseals = events(&vault.url, "unseal").await;
    let last = unseals.last().unwrap();
    assert_eq!(last["decision"], "allowed", "{last}");
    assert_eq!(last["principal"], "auto-unseal", "{last}");
    vault.stop().await;

    // The token taken out: the vault starts, sealed, and says why.
    hsm.take_out();
    let vault = start_with_env(&args, &hsm.env(), "vault is sealed").await;
    let said = line(&vault, "vault is sealed");
    assert!(
        said.contains("the HSM token \"vault-eu\" is not present"),
        "{said}"
    );
    let custodian = client(&vault.url, CUSTODY).await;
    let status = custodian.status().await.unwrap();
    assert!(status.sealed);
    assert!(
        status
            .seal_message
            .as_deref()
            .is_some_and(|m| m.contains("is not present")),
        "{status:?}"
    );
    let data = client(&vault.url, DATA).await;
    assert!(matches!(
        data.get("people", "r1").await,
        Err(Error::Unavailable(_))
    ));
    let err = custodian.unseal_with_hsm(false).await.unwrap_err();
    assert!(
        matches!(&err, Error::FailedPrecondition(m) if m.contains("is not present")),
        "{err:?}"
    );
    // Put back while the server runs: a custodian's `unseal --hsm` finds
    // it; the audit log holds both refusals (at start, and when asked),
    // with why.
    hsm.put_back();
    assert!(!custodian.unseal_with_hsm(false).await.unwrap().sealed);
    drop((custodian, data));
    read_back(&vault.url, &record).await;
    let unseals = events(&vault.url, "unseal").await;
    let refused: Vec<_> = unseals
        .iter()
        .filter(|e| {
            e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("is not present"))
        })
        .collect();
    assert_eq!(refused.len(), 2, "{unseals:?}");
    for e in refused {
        assert_eq!(e["decision"], "failed", "{e}");
    }
    // A keyring backup restored: refused as older, unless custodians
    // accept the rollback (disaster recovery), through the HSM as well.
    let keyring = dir.path().join("data/keyring");
    let backup = std::fs::read(&keyring).unwrap();
    // (Two keyring changes that leave the data's keys alone.)
    let custodian = client(&vault.url, CUSTODY).await;
    custodian.approve_build(&[0x42; 48]).await.unwrap();
    custodian.revoke_build(&[0x42; 48]).await.unwrap();
    drop(custodian);
    vault.stop().await;
    std::fs::write(&keyring, &backup).unwrap();
    let vault = start_with_env(&args, &hsm.env(), "vault is sealed").await;
    assert!(
        line(&vault, "vault is sealed").contains("older than"),
        "{:?}",
        vault.lines
    );
    let custodian = client(&vault.url, CUSTODY).await;
    assert!(custodian.unseal_with_hsm(false).await.is_err());
    assert!(!custodian.unseal_with_hsm(true).await.unwrap().sealed);
    read_back(&vault.url, &record).await;
    let unseals = events(&vault.url, "unseal").await;
    assert!(
        unseals.last().unwrap()["detail"]
            .as_str()
            .unwrap()
            .contains("keyring rollback accepted"),
        "{unseals:?}"
    );
    drop(custodian);
    vault.stop().await;

    // Another token of the same label is not the one that sealed it.
    hsm.delete_token();
    hsm.init_token();
    let vault = start_with_env(&args, &hsm.env(), "vault is sealed").await;
    let said = line(&vault, "vault is sealed");
    assert!(
        said.contains("the keyring was sealed by the token of serial"),
        "{said}"
    );
    vault.stop().await;
}

/// Moves between seals, each authorised by M of N custodians' shares:
/// Shamir → PKCS#11 (the new shares are recovery shares; the vault
/// unseals itself) → Shamir (the new shares unseal it again). Data stays
/// readable throughout; a wrong recovery share is refused.
#[tokio::test]
async fn custodians_move_the_keyring_between_seals() {
    if vault_tests::skip_on_postgres("runs the binary over RocksDB") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsm::new(dir.path());
    let shamir_cfg = config(dir.path(), "");
    let vault = start_with_env(
        &["--config", &shamir_cfg],
        &hsm.env(),
        "vault is not initialised",
    )
    .await;
    let custodian = client(&vault.url, CUSTODY).await;
    let init = custodian.init(3, 2).await.unwrap();
    for share in &init.shares[..2] {
        custodian.unseal(share).await.unwrap();
    }
    let record = write_one(&vault.url).await;
    assert_eq!(custodian.status().await.unwrap().seal, "shamir");
    // A server without the HSM settings cannot move to it: said at the
    // first share.
    let err = custodian
        .rekey_to_seal(&init.shares[0], 3, 2, &[], "pkcs11")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::FailedPrecondition(m) if m.contains("no PKCS#11 seal configured")),
        "{err:?}"
    );
    drop(custodian);
    vault.stop().await;

    // The same folder under a server with the HSM: the keyring is still
    // sealed with shares, so it waits for them.
    let hsm_cfg = config(dir.path(), &hsm.seal_table());
    let args = ["--config", hsm_cfg.as_str()];
    let vault = start_with_env(&args, &hsm.env(), "vault is sealed").await;
    let custodian = client(&vault.url, CUSTODY).await;
    for share in &init.shares[1..] {
        custodian.unseal(share).await.unwrap();
    }
    let first = custodian
        .rekey_to_seal(&init.shares[0], 4, 3, &[], "pkcs11")
        .await
        .unwrap();
    assert!(!first.complete);
    let done = custodian
        .rekey_to_seal(&init.shares[2], 4, 3, &[], "pkcs11")
        .await
        .unwrap();
    assert!(done.complete, "the second share completes the move");
    let recovery = done.shares;
    assert_eq!(recovery.len(), 4);
    let status = custodian.status().await.unwrap();
    assert_eq!(status.seal, "pkcs11");
    assert!(!status.sealed);
    read_back(&vault.url, &record).await;
    let rekeys = events(&vault.url, "rekey").await;
    assert!(
        rekeys
            .last()
            .unwrap()
            .to_string()
            .contains("3 of 4 shares; seal: pkcs11"),
        "{rekeys:?}"
    );
    drop(custodian);
    vault.stop().await;

    // Restart: the HSM unseals it; the old shares are refused.
    let vault = start_with_env(&args, &hsm.env(), "vault unsealed by the HSM").await;
    read_back(&vault.url, &record).await;
    let custodian = client(&vault.url, CUSTODY).await;
    // Back to shares: three recovery shares approve it. A forged one
    // (another set's share) is refused at once.
    let err = custodian
        .rekey_to_seal(&init.shares[0], 2, 2, &[], "shamir")
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::InvalidInput(_)), "{err:?}");
    for share in &recovery[..2] {
        let p = custodian
            .rekey_to_seal(share, 2, 2, &[], "shamir")
            .await
            .unwrap();
        assert!(!p.complete);
    }
    let done = custodian
        .rekey_to_seal(&recovery[2], 2, 2, &[], "shamir")
        .await
        .unwrap();
    assert!(done.complete);
    assert_eq!(custodian.status().await.unwrap().seal, "shamir");
    drop(custodian);
    vault.stop().await;

    // Restart: sealed, waiting for the new shares; the HSM is not asked.
    let vault = start_with_env(&args, &hsm.env(), "vault is sealed").await;
    assert!(line(&vault, "vault is sealed").contains("2 of 2 custodians"));
    let custodian = client(&vault.url, CUSTODY).await;
    let err = custodian.unseal_with_hsm(false).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("sealed with shares")),
        "{err:?}"
    );
    for share in &done.shares {
        custodian.unseal(share).await.unwrap();
    }
    read_back(&vault.url, &record).await;
    drop(custodian);
    vault.stop().await;
}

/// The key release gate with self-reported evidence: once a build is
/// approved, only an approved build gets the key, by shares or by the
/// HSM; a refusal says which measurement was presented, and is an audit
/// event. The status shows the builds and whether this one is among them,
/// and never calls a self-reported measurement attested.
#[tokio::test]
async fn the_key_is_released_only_to_an_approved_build() {
    if vault_tests::skip_on_postgres("runs the binary over RocksDB") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsm::new(dir.path());
    let cfg = config(dir.path(), &hsm.seal_table());
    let args = ["--config", cfg.as_str()];
    let vault = start_with_env(&args, &hsm.env(), "vault is not initialised").await;
    let custodian = client(&vault.url, CUSTODY).await;
    custodian.init(1, 1).await.unwrap();
    let record = write_one(&vault.url).await;
    let status = custodian.status().await.unwrap();
    assert_eq!(status.evidence, "self-reported");
    assert!(!status.attested);
    assert_eq!(status.measurement_approved(), None, "no build approved yet");
    let own = status.measurement.expect("a self-reported measurement");
    // The server says its measurement at start, and never "attested".
    let said = line(&vault, "build measurement");
    assert!(
        said.contains("self-reported, not attested") && said.contains(&hex::encode(own)),
        "{said}"
    );
    let other = [0x5a; 48];
    // Through vaultctl: the status says where the keys live and what this
    // build presents; a measurement must be 96 hex digits.
    let ctl = |args: Vec<String>| {
        let url = vault.url.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            vaultctl_at(&url, Some(CUSTODY), &args, None).await
        }
    };
    let words = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
    let text = ctl(words("operator status")).await;
    let text = text.ok();
    for line in [
        "seal: pkcs11",
        "hsm: token \"vault-eu\"",
        "evidence: self-reported (not attested: no TEE vouches for it)",
        "approved builds: none (the key release gate is off)",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    let bad = ctl(words("operator approve-build abc")).await;
    assert!(bad.error(2).contains("96 hexadecimal digits"), "{bad:?}");
    let approved = ctl(words(&format!(
        "operator approve-build {}",
        hex::encode(own)
    )))
    .await;
    assert!(
        approved.ok().contains("approved (1 approved)"),
        "{approved:?}"
    );
    assert_eq!(custodian.approve_build(&own).await.unwrap(), (false, 1));
    assert_eq!(custodian.approve_build(&other).await.unwrap(), (true, 2));
    let text = ctl(words("operator status")).await;
    assert!(
        text.ok().contains("approved builds: 2") && text.ok().contains("this build approved: yes"),
        "{text:?}"
    );
    let status = custodian.status().await.unwrap();
    assert_eq!(status.approved_builds.len(), 2);
    assert_eq!(status.measurement_approved(), Some(true));
    let approvals = events(&vault.url, "approve_build").await;
    assert_eq!(approvals.len(), 3, "{approvals:?}");
    assert!(
        approvals[0]["detail"]
            .as_str()
            .unwrap()
            .contains(&hex::encode(own)),
        "{approvals:?}"
    );
    drop(custodian);
    vault.stop().await;

    // An approved build: the HSM releases the key.
    let vault = start_with_env(&args, &hsm.env(), "vault unsealed by the HSM").await;
    read_back(&vault.url, &record).await;
    let custodian = client(&vault.url, CUSTODY).await;
    assert_eq!(custodian.revoke_build(&own).await.unwrap(), (true, 1));
    assert_eq!(custodian.revoke_build(&own).await.unwrap(), (false, 1));
    assert_eq!(events(&vault.url, "revoke_build").await.len(), 2);
    drop(custodian);
    vault.stop().await;

    // This build revoked: refused, with the measurement it presented.
    let vault = start_with_env(&args, &hsm.env(), "vault is sealed").await;
    let said = line(&vault, "vault is sealed");
    assert!(
        said.contains("key release refused")
            && said.contains(&hex::encode(own))
            && said.contains("self-reported")
            && said.contains("not among the 1 approved builds"),
        "{said}"
    );
    let custodian = client(&vault.url, CUSTODY).await;
    let status = custodian.status().await.unwrap();
    assert!(status.sealed);
    assert_eq!(status.measurement_approved(), Some(false));
    assert_eq!(status.approved_builds, vec![other]);
    drop(custodian);
    vault.stop().await;
    let unseals = stored_events(dir.path(), "unseal");
    let last = unseals.last().unwrap();
    assert_eq!(last["decision"], "failed", "{last}");
    let detail = last["detail"].as_str().unwrap();
    assert!(
        detail.contains("key release refused") && detail.contains(&hex::encode(own)),
        "{last}"
    );
}
