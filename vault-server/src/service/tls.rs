//! TLS on the gRPC port (rustls with the `ring` provider), and the principal
//! a client certificate names.
//!
//! [`ServerTls`] is a checked server configuration: its certificate chain
//! and private key (which must belong together) and, for mutual TLS, the
//! CA certificates that client certificates must chain to. With client CAs,
//! every connection must present a valid, unexpired client certificate
//! signed by one of them, or the handshake fails (rustls' WebPKI verifier:
//! chain, validity period, key usage).
//!
//! A client certificate names its principal by its first URI subject
//! alternative name (the whole URI, e.g. `spiffe://eu.example/billing`), or,
//! without one, by the first common name (CN) of its subject
//! ([`certificate_principal`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, Tag, Tagged};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest principal name taken from a certificate.
const MAX_PRINCIPAL_CHARS: usize = 512;
/// `id-at-commonName`.
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// The `[tls]` files of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM), its own certificate first.
    pub cert_file: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; when
    /// set, every connection must present one (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
}

/// A checked TLS configuration of the gRPC port. `Debug` shows no key.
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: Vec<u8>,
    key_pem: Zeroizing<Vec<u8>>,
    client_ca_pem: Option<Vec<u8>>,
    client_cas: usize,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("key", &"<redacted>")
            .field("client_cas", &self.client_cas)
            .finish()
    }
}

impl ServerTls {
    /// Reads and checks the `[tls]` files. Errors name the file and say what
    /// is wrong with it.
    pub fn load(files: &TlsFiles) -> Result<ServerTls> {
        let cert = read("tls.cert_file", &files.cert_file)?;
        let key = Zeroizing::new(read("tls.key_file", &files.key_file)?);
        let ca = files
            .client_ca_file
            .as_deref()
            .map(|path| read("tls.client_ca_file", path))
            .transpose()?;
        let label = |key: &str, path: &Path| format!("{key} {}", path.display());
        Self::check(
            cert,
            key,
            ca,
            &label("tls.cert_file", &files.cert_file),
            &label("tls.key_file", &files.key_file),
            &files
                .client_ca_file
                .as_deref()
                .map(|p| label("tls.client_ca_file", p))
                .unwrap_or_default(),
        )
        .map_err(Error::Config)
    }

    /// A configuration from PEM text: the server's certificate chain, its
    /// private key and, for mutual TLS, the client CA certificates.
    pub fn from_pem(
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
        client_ca_pem: Option<Vec<u8>>,
    ) -> Result<ServerTls> {
        Self::check(
            cert_pem.into(),
            Zeroizing::new(key_pem.into()),
            client_ca_pem,
            "the server certificate",
            "the server key",
            "the client CA certificates",
        )
        .map_err(Error::Config)
    }

    fn check(
        cert_pem: Vec<u8>,
        key_pem: Zeroizing<Vec<u8>>,
        client_ca_pem: Option<Vec<u8>>,
        cert_label: &str,
        key_label: &str,
        ca_label: &str,
    ) -> Result<ServerTls, String> {
        let chain = certificates(&cert_pem).map_err(|e| format!("{cert_label}: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => format!(
                "{key_label}: no private key in it (expected a PEM \"PRIVATE KEY\", \
                 \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block)"
            ),
            e => format!("{key_label}: not valid PEM: {e}"),
        })?;
        // The key must be usable and must be the certificate's.
        CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                format!("{key_label} is not the key of the certificate in {cert_label}")
            }
            e => format!("{key_label}: unusable key: {e}"),
        })?;

        let mut client_cas = 0;
        if let Some(pem) = &client_ca_pem {
            let mut roots = RootCertStore::empty();
            for (i, der) in certificates(pem)
                .map_err(|e| format!("{ca_label}: {e}"))?
                .into_iter()
                .enumerate()
            {
                roots.add(der).map_err(|e| {
                    format!(
                        "{ca_label}: certificate {} cannot be a trust anchor: {e}",
                        i + 1
                    )
                })?;
            }
            client_cas = roots.len();
        }
        Ok(ServerTls {
            cert_pem,
            key_pem,
            client_ca_pem,
            client_cas,
        })
    }

    /// Whether every connection must present a client certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca_pem.is_some()
    }

    /// tonic's server configuration.
    pub(crate) fn server_config(&self) -> ServerTlsConfig {
        install_provider();
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &*self.key_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        match &self.client_ca_pem {
            Some(ca) => config
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(false),
            None => config,
        }
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading {key} {}", path.display()), e))
}

/// The certificates of a PEM text, each checked to be X.509; at least one.
pub(crate) fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in it (expected a PEM \"CERTIFICATE\" block)".into());
    }
    for (i, der) in certs.iter().enumerate() {
        x509_cert::Certificate::from_der(der)
            .map_err(|e| format!("certificate {} is not valid X.509: {e}", i + 1))?;
    }
    Ok(certs)
}

/// The one crypto provider: `ring`.
pub(crate) fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Makes `ring` the process's rustls provider unless one is set already
/// (tonic's TLS takes the process default).
pub(crate) fn install_provider() {
    // An error means a provider is installed already: that one stays.
    let _ = provider().install_default();
}

/// The principal a client certificate (DER) names: its first URI subject
/// alternative name, whole (`spiffe://eu.example/billing-service`), else the
/// first common name of its subject. A common name that looks like a URI
/// (`spiffe://…`, `urn:…`) is refused, so it cannot pose as a URI
/// principal; so is a name with control characters, or one longer than 512
/// characters.
pub fn certificate_principal(der: &[u8]) -> Result<String, String> {
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| format!("the client certificate is not valid X.509: {e}"))?;
    let tbs = &cert.tbs_certificate;
    let sans = tbs
        .get::<SubjectAltName>()
        .map_err(|e| format!("the client certificate's subject alternative names: {e}"))?;
    let uri = sans.and_then(|(_, names)| {
        names.0.into_iter().find_map(|name| match name {
            GeneralName::UniformResourceIdentifier(uri) => Some(uri.as_str().to_owned()),
            _ => None,
        })
    });
    let name = match uri {
        // A URI SAN must be a URI, or it could pose as a CN principal.
        Some(uri) if !looks_like_uri(&uri) => {
            return Err(
                "the client certificate's URI subject alternative name is not a URI (scheme:…)"
                    .to_owned(),
            )
        }
        Some(uri) => uri,
        None => {
            let cn = common_name(&tbs.subject)?.ok_or_else(|| {
                "the client certificate names no principal: it has no URI subject \
                 alternative name and no common name"
                    .to_owned()
            })?;
            // URI principals come from URI SANs only: a CA that signs any
            // CN must not let `CN=spiffe://…` pose as a workload identity.
            if looks_like_uri(&cn) {
                return Err(
                    "the client certificate's common name looks like a URI (scheme:…); \
                     a URI principal must be a URI subject alternative name"
                        .to_owned(),
                );
            }
            cn
        }
    };
    if name.is_empty()
        || name.chars().count() > MAX_PRINCIPAL_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(format!(
            "the client certificate's principal name must be 1 to {MAX_PRINCIPAL_CHARS} \
             characters without control characters"
        ));
    }
    Ok(name)
}

/// Whether `name` starts with a URI scheme and its colon (RFC 3986:
/// a letter, then letters, digits, `+`, `-` or `.`).
fn looks_like_uri(name: &str) -> bool {
    let Some((scheme, _)) = name.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// The first common name of a subject, if it has one.
fn common_name(subject: &x509_cert::name::Name) -> Result<Option<String>, String> {
    let Some(value) = subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == COMMON_NAME)
        .map(|atv| &atv.value)
    else {
        return Ok(None);
    };
    let bad = |e: x509_cert::der::Error| format!("the client certificate's common name: {e}");
    let text = match value.tag() {
        Tag::Utf8String => value
            .decode_as::<Utf8StringRef<'_>>()
            .map_err(bad)?
            .to_string(),
        Tag::PrintableString => value
            .decode_as::<PrintableStringRef<'_>>()
            .map_err(bad)?
            .to_string(),
        Tag::Ia5String => value
            .decode_as::<Ia5StringRef<'_>>()
            .map_err(bad)?
            .to_string(),
        tag => {
            return Err(format!(
                "the client certificate's common name is a {tag}; expected UTF8String, \
                 PrintableString or IA5String"
            ))
        }
    };
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, SanType,
    };

    use super::*;

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "test ca");
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    fn leaf(ca: &Ca, uri: Option<&str>, cn: Option<&str>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().unwrap()));
        }
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn the_principal_is_the_first_uri_san_else_the_cn() {
        let ca = ca();
        let (both, _) = leaf(&ca, Some("spiffe://eu.example/billing"), Some("billing-cn"));
        assert_eq!(
            certificate_principal(&der(&both)).unwrap(),
            "spiffe://eu.example/billing"
        );
        let (cn_only, _) = leaf(&ca, None, Some("support-desk"));
        assert_eq!(
            certificate_principal(&der(&cn_only)).unwrap(),
            "support-desk"
        );
        let (neither, _) = leaf(&ca, None, None);
        let e = certificate_principal(&der(&neither)).unwrap_err();
        assert!(e.contains("names no principal"), "{e}");
        let e = certificate_principal(b"not a certificate").unwrap_err();
        assert!(e.contains("not valid X.509"), "{e}");
        // A CN never poses as a URI principal.
        for uri in [
            "spiffe://eu.example/billing",
            "urn:x:y",
            "https:x",
            "a+b.c-d:e",
        ] {
            let (cn_uri, _) = leaf(&ca, None, Some(uri));
            let e = certificate_principal(&der(&cn_uri)).unwrap_err();
            assert!(e.contains("looks like a URI"), "{uri}: {e}");
        }
        for plain in ["support desk", "svc-1.eu", ":x", "1a:b", "a b:c"] {
            let (cn, _) = leaf(&ca, None, Some(plain));
            assert_eq!(certificate_principal(&der(&cn)).unwrap(), plain);
        }
    }

    #[test]
    fn pem_errors_are_clear() {
        let ca = ca();
        let (cert, key) = leaf(&ca, None, Some("vault"));
        let (_, other_key) = leaf(&ca, None, Some("other"));
        assert!(ServerTls::from_pem(cert.clone(), key.clone(), None).is_ok());
        let tls =
            ServerTls::from_pem(cert.clone(), key.clone(), Some(ca.pem.clone().into())).unwrap();
        assert!(tls.requires_client_certificates());
        assert!(!format!("{tls:?}").contains("PRIVATE"));

        let err = |c: &str, k: &str, ca: Option<&str>| {
            ServerTls::from_pem(c, k, ca.map(|s| s.as_bytes().to_vec()))
                .unwrap_err()
                .to_string()
        };
        let e = err(&key, &key, None);
        assert!(e.contains("server certificate: no certificate"), "{e}");
        let e = err(&cert, &cert, None);
        assert!(e.contains("server key: no private key"), "{e}");
        let e = err(&cert, &other_key, None);
        assert!(e.contains("is not the key of the certificate"), "{e}");
        let e = err(&cert, &key, Some("garbage"));
        assert!(e.contains("client CA certificates: no certificate"), "{e}");
        let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = err(broken, &key, None);
        assert!(e.contains("not valid X.509"), "{e}");
        let truncated = &cert[..cert.len() / 2];
        let e = err(truncated, &key, None);
        assert!(e.contains("not valid PEM"), "{e}");
    }

    #[test]
    fn files_are_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        let (cert, key) = leaf(&ca, None, Some("vault"));
        let cert_file = dir.path().join("server.pem");
        let key_file = dir.path().join("server.key");
        std::fs::write(&cert_file, &cert).unwrap();
        std::fs::write(&key_file, &key).unwrap();
        let mut files = TlsFiles {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            client_ca_file: Some(dir.path().join("missing-ca.pem")),
        };
        let e = ServerTls::load(&files).unwrap_err().to_string();
        assert!(
            e.contains("tls.client_ca_file") && e.contains("missing-ca.pem"),
            "{e}"
        );
        files.client_ca_file = Some(key_file.clone());
        let e = ServerTls::load(&files).unwrap_err().to_string();
        assert!(
            e.contains("tls.client_ca_file") && e.contains("server.key"),
            "{e}"
        );
        assert!(e.contains("no certificate"), "{e}");
        files.client_ca_file = None;
        files.key_file = cert_file;
        let e = ServerTls::load(&files).unwrap_err().to_string();
        assert!(
            e.contains("tls.key_file") && e.contains("server.pem"),
            "{e}"
        );
    }
}
