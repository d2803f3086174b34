//! The PKCS#11 seal: the unseal key wrapped (AES-256-GCM) by a key that
//! never leaves an HSM in the region.
//!
//! The wrapping key is an AES-256 secret key object on the token, made
//! here on first use with `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE` and
//! not `CKA_EXTRACTABLE`; a key found under the configured label that is
//! extractable or not sensitive is refused. Wrapping and unwrapping run
//! inside the HSM (`CKM_AES_GCM`, a random 96-bit IV, a 128-bit tag, AAD
//! binding the region); only the unseal key's wrapped bytes leave it. The
//! keyring's header names the token (label and serial) and the key
//! (label and `CKA_ID`): at unseal the token must be the same one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::crypto::{put_lp, Key256};
use crate::keys::seal::{HsmSeal, HSM_WRAPPED_LEN};
use crate::keys::Region;

/// The label of the AAD the HSM binds the wrapped unseal key to.
const HSM_SEAL_LABEL: &[u8] = b"vault/v1/hsm-seal";

/// How to reach the HSM (`[seal]` in the configuration). `Debug` never
/// shows the PIN.
#[derive(Clone)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub library: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// The user PIN.
    pub pin: SecretString,
    /// The wrapping key's label (made on first use).
    pub key_label: String,
}

impl std::fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("library", &self.library)
            .field("token_label", &self.token_label)
            .field("key_label", &self.key_label)
            .finish_non_exhaustive()
    }
}

/// Why the HSM did not wrap or unwrap. Each says what to check.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The module could not be loaded or initialised.
    #[error("the PKCS#11 module {library} could not be loaded: {reason}")]
    Library {
        /// The module's path.
        library: String,
        /// Why.
        reason: String,
    },
    /// No slot holds a token of that label.
    #[error("the HSM token \"{0}\" is not present (no slot holds a token of that label)")]
    TokenMissing(String),
    /// The token present is not the one that sealed the keyring.
    #[error(
        "the HSM token \"{label}\" present has serial {found}; the keyring was sealed by the \
         token of serial {sealed_by}"
    )]
    OtherToken {
        /// The token label.
        label: String,
        /// The serial found.
        found: String,
        /// The serial in the keyring.
        sealed_by: String,
    },
    /// The user PIN was refused.
    #[error("the HSM refused the PIN for token \"{0}\"")]
    Pin(String),
    /// The key named by the keyring is not on the token.
    #[error("the HSM key {0} is not on the token")]
    KeyMissing(String),
    /// A key under the configured label may leave the HSM.
    #[error(
        "the HSM key \"{0}\" is, or once was, extractable or not sensitive; the seal needs a \
         key that never left the HSM"
    )]
    Extractable(String),
    /// The HSM did not open the wrapped unseal key.
    #[error("the HSM key did not open the wrapped unseal key (altered, or another key)")]
    Unwrap,
    /// Any other PKCS#11 failure.
    #[error("the HSM failed: {0}")]
    Other(String),
}

impl From<P11Error> for HsmError {
    fn from(e: P11Error) -> Self {
        HsmError::Other(e.to_string())
    }
}

/// One PKCS#11 context per module per process: `C_Initialize` may run once.
static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Arc<Pkcs11>>>> = OnceLock::new();

fn contexts() -> std::sync::MutexGuard<'static, HashMap<PathBuf, Arc<Pkcs11>>> {
    CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Finalizes the module's context (if nothing else uses it), so the next
/// use initialises it again: some modules (SoftHSM2) see a token put back
/// only then.
fn reset_context(library: &Path) {
    let mut contexts = contexts();
    if let Some(ctx) = contexts.remove(library) {
        match Arc::try_unwrap(ctx) {
            Ok(ctx) => {
                if let Err(e) = ctx.finalize() {
                    tracing::warn!(error = %e, "the PKCS#11 module did not finalize");
                }
            }
            Err(ctx) => {
                contexts.insert(library.to_owned(), ctx);
            }
        }
    }
}

fn context(library: &Path) -> Result<Arc<Pkcs11>, HsmError> {
    let mut contexts = contexts();
    if let Some(ctx) = contexts.get(library) {
        return Ok(Arc::clone(ctx));
    }
    let failed = |reason: String| HsmError::Library {
        library: library.display().to_string(),
        reason,
    };
    let ctx = Pkcs11::new(library).map_err(|e| failed(e.to_string()))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(failed(e.to_string())),
    }
    let ctx = Arc::new(ctx);
    contexts.insert(library.to_owned(), Arc::clone(&ctx));
    Ok(ctx)
}

fn aad(region: &Region) -> Vec<u8> {
    let mut aad = HSM_SEAL_LABEL.to_vec();
    put_lp(&mut aad, region.as_str().as_bytes());
    aad
}

/// A logged-in session on the configured token, with its serial.
struct TokenSession {
    session: Session,
    serial: String,
}

/// [`open_once`]; a token not found is looked for once more after the
/// module is initialised again (a token put back since it started).
fn open(cfg: &Pkcs11Config) -> Result<TokenSession, HsmError> {
    match open_once(cfg) {
        Err(HsmError::TokenMissing(_)) => {
            reset_context(&cfg.library);
            open_once(cfg)
        }
        other => other,
    }
}

fn open_once(cfg: &Pkcs11Config) -> Result<TokenSession, HsmError> {
    let ctx = context(&cfg.library)?;
    let mut found = None;
    for slot in ctx.get_slots_with_token()? {
        let info = ctx.get_token_info(slot)?;
        if info.label().trim_end() == cfg.token_label {
            found = Some((slot, info.serial_number().trim_end().to_owned()));
            break;
        }
    }
    let (slot, serial) = found.ok_or_else(|| HsmError::TokenMissing(cfg.token_label.clone()))?;
    let session = ctx.open_rw_session(slot)?;
    let pin = AuthPin::new(cfg.pin.expose_secret().into());
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(P11Error::Pkcs11(
            RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange | RvError::PinLocked,
            _,
        )) => return Err(HsmError::Pin(cfg.token_label.clone())),
        Err(e) => return Err(e.into()),
    }
    Ok(TokenSession { session, serial })
}

fn secret_keys(session: &Session, by: Attribute) -> Result<Vec<ObjectHandle>, HsmError> {
    Ok(session.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        by,
    ])?)
}

/// Refuses a key that can leave the HSM, or ever could have, and a key
/// that is not AES-256.
fn check_kept_inside(session: &Session, key: ObjectHandle, label: &str) -> Result<(), HsmError> {
    let attrs = session.get_attributes(
        key,
        &[
            AttributeType::Extractable,
            AttributeType::Sensitive,
            AttributeType::NeverExtractable,
            AttributeType::AlwaysSensitive,
            AttributeType::ValueLen,
        ],
    )?;
    let (mut extractable, mut sensitive) = (true, false);
    let (mut never_extractable, mut always_sensitive) = (false, false);
    let mut len = 0;
    for a in attrs {
        match a {
            Attribute::Extractable(v) => extractable = v,
            Attribute::Sensitive(v) => sensitive = v,
            Attribute::NeverExtractable(v) => never_extractable = v,
            Attribute::AlwaysSensitive(v) => always_sensitive = v,
            Attribute::ValueLen(v) => len = u64::from(v),
            _ => {}
        }
    }
    if extractable || !sensitive || !never_extractable || !always_sensitive {
        return Err(HsmError::Extractable(label.to_owned()));
    }
    if len != 32 {
        return Err(HsmError::Other(format!(
            "the HSM key \"{label}\" is not an AES-256 key ({len} bytes)"
        )));
    }
    Ok(())
}

/// Wraps a new unseal key with the configured token's key (made on first
/// use), and says which token and key did it. `recovery_check` is stored
/// beside it.
pub fn wrap(
    cfg: &Pkcs11Config,
    region: &Region,
    unseal_key: &Key256,
    recovery_check: [u8; 32],
) -> Result<HsmSeal, HsmError> {
    let t = open(cfg)?;
    let label = Attribute::Label(cfg.key_label.as_bytes().to_vec());
    let keys = secret_keys(&t.session, label.clone())?;
    let key = match keys.as_slice() {
        [] => {
            let mut id = vec![0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut id);
            t.session.generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(32.into()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    label,
                    Attribute::Id(id),
                ],
            )?
        }
        [key] => *key,
        _ => {
            return Err(HsmError::Other(format!(
                "{} keys on token \"{}\" carry the label \"{}\"; keep one",
                keys.len(),
                cfg.token_label,
                cfg.key_label
            )))
        }
    };
    check_kept_inside(&t.session, key, &cfg.key_label)?;
    let mut key_id = Vec::new();
    for a in t.session.get_attributes(key, &[AttributeType::Id])? {
        if let Attribute::Id(id) = a {
            key_id = id;
        }
    }
    if key_id.is_empty() || key_id.len() > 64 {
        return Err(HsmError::Other(format!(
            "the HSM key \"{}\" has no CKA_ID of 1 to 64 bytes; give it one",
            cfg.key_label
        )));
    }
    let mut iv = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut iv);
    let aad = aad(region);
    let mut iv_param = iv;
    let params = GcmParams::new(&mut iv_param, &aad, 128.into())?;
    let sealed = t
        .session
        .encrypt(&Mechanism::AesGcm(params), key, unseal_key.expose_secret())?;
    let mut wrapped_key = iv.to_vec();
    wrapped_key.extend_from_slice(&sealed);
    if wrapped_key.len() != HSM_WRAPPED_LEN {
        return Err(HsmError::Other(format!(
            "the HSM returned {} bytes of AES-GCM output, not {}",
            sealed.len(),
            HSM_WRAPPED_LEN - 12
        )));
    }
    if t.serial.is_empty() || t.serial.len() > 16 {
        return Err(HsmError::Other(format!(
            "the token \"{}\" reports a serial number of {} bytes; the seal needs 1 to 16 to \
             recognise the token",
            cfg.token_label,
            t.serial.len()
        )));
    }
    let seal = HsmSeal {
        token_label: cfg.token_label.clone(),
        token_serial: t.serial,
        key_label: cfg.key_label.clone(),
        key_id,
        wrapped_key,
        recovery_check,
    };
    // What the keyring header could not hold is refused before it is
    // written, not at the next start.
    seal.check().map_err(|e| {
        HsmError::Other(format!("the HSM's identity does not fit the keyring: {e}"))
    })?;
    Ok(seal)
}

/// Unwraps the unseal key inside the HSM named by `seal`, on the token
/// of the configured label, which must have the serial the keyring names.
pub fn unwrap(cfg: &Pkcs11Config, region: &Region, seal: &HsmSeal) -> Result<Key256, HsmError> {
    if cfg.token_label != seal.token_label {
        return Err(HsmError::Other(format!(
            "the keyring was sealed by token \"{}\"; this server is configured for token \"{}\"",
            seal.token_label, cfg.token_label
        )));
    }
    let t = open(cfg)?;
    if t.serial != seal.token_serial {
        return Err(HsmError::OtherToken {
            label: seal.token_label.clone(),
            found: t.serial,
            sealed_by: seal.token_serial.clone(),
        });
    }
    let key = match secret_keys(&t.session, Attribute::Id(seal.key_id.clone()))?.as_slice() {
        [key] => *key,
        [] => return Err(HsmError::KeyMissing(seal.identity())),
        keys => {
            return Err(HsmError::Other(format!(
                "{} keys on the token carry the id of the HSM key {}; keep one",
                keys.len(),
                seal.identity()
            )))
        }
    };
    check_kept_inside(&t.session, key, &seal.key_label)?;
    let (iv, sealed) = seal.wrapped_key.split_at(12);
    let mut iv: [u8; 12] = iv.try_into().map_err(|_| HsmError::Unwrap)?;
    let aad = aad(region);
    let params = GcmParams::new(&mut iv, &aad, 128.into())?;
    let plain = Zeroizing::new(
        t.session
            .decrypt(&Mechanism::AesGcm(params), key, sealed)
            .map_err(|e| match e {
                P11Error::Pkcs11(
                    RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange,
                    _,
                ) => HsmError::Unwrap,
                e => e.into(),
            })?,
    );
    Key256::from_slice(&plain).ok_or(HsmError::Unwrap)
}
