//! TLS options of the client: the CA that signs the vault's certificate and
//! a client certificate for mutual TLS, from PEM text or files. Each is
//! checked before use, so a wrong file gives an error that names it rather
//! than a failed handshake.

use std::fmt;
use std::path::PathBuf;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Where some PEM comes from.
#[derive(Clone)]
pub(crate) enum Pem {
    /// Given as text.
    Text(Zeroizing<Vec<u8>>),
    /// Read from a file when the client connects.
    File(PathBuf),
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Never the bytes: a private key may be among them.
            Pem::Text(_) => f.write_str("<pem>"),
            Pem::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl Pem {
    /// `the CA certificate` or `the CA certificate file /etc/ca.pem`.
    fn label(&self, what: &str) -> String {
        match self {
            Pem::Text(_) => format!("the {what}"),
            Pem::File(path) => format!("the {what} file {}", path.display()),
        }
    }

    fn bytes(&self, what: &str) -> Result<Zeroizing<Vec<u8>>> {
        match self {
            Pem::Text(bytes) => Ok(bytes.clone()),
            Pem::File(path) => std::fs::read(path)
                .map(Zeroizing::new)
                .map_err(|e| Error::InvalidInput(format!("cannot read {}: {e}", self.label(what)))),
        }
    }
}

/// The TLS options a builder collected.
#[derive(Clone, Debug, Default)]
pub(crate) struct TlsOptions {
    pub(crate) ca: Option<Pem>,
    pub(crate) identity: Option<(Pem, Pem)>,
    pub(crate) server_name: Option<String>,
}

const CA: &str = "CA certificate";
const CERT: &str = "client certificate";
const KEY: &str = "client key";

impl TlsOptions {
    /// Whether any option asks for TLS.
    pub(crate) fn any(&self) -> bool {
        self.ca.is_some() || self.identity.is_some() || self.server_name.is_some()
    }

    /// Whether a client certificate is to be presented.
    pub(crate) fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// Reads and checks the files; tonic's configuration. Without a CA
    /// certificate the system's trusted roots verify the vault.
    pub(crate) fn client_config(&self) -> Result<ClientTlsConfig> {
        let mut config = ClientTlsConfig::new();
        match &self.ca {
            Some(ca) => {
                let pem = ca.bytes(CA)?;
                let label = ca.label(CA);
                let mut roots = RootCertStore::empty();
                for (i, der) in certificates(&pem, &label)?.into_iter().enumerate() {
                    roots.add(der).map_err(|e| {
                        Error::InvalidInput(format!(
                            "{label}: certificate {} is not a usable CA certificate: {e}",
                            i + 1
                        ))
                    })?;
                }
                config = config.ca_certificate(Certificate::from_pem(&*pem));
            }
            None => config = config.with_native_roots(),
        }
        if let Some((cert, key)) = &self.identity {
            let cert_pem = cert.bytes(CERT)?;
            let cert_label = cert.label(CERT);
            let chain = certificates(&cert_pem, &cert_label)?;
            let key_pem = key.bytes(KEY)?;
            let key_label = key.label(KEY);
            let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                Error::InvalidInput(match e {
                    rustls::pki_types::pem::Error::NoItemsFound => {
                        format!("{key_label} holds no PEM private key")
                    }
                    e => format!("{key_label} is not valid PEM: {e}"),
                })
            })?;
            CertifiedKey::from_der(chain, der, &rustls::crypto::ring::default_provider()).map_err(
                |e| {
                    Error::InvalidInput(match e {
                        rustls::Error::InconsistentKeys(_) => {
                            format!("{key_label} is not the key of {cert_label}")
                        }
                        rustls::Error::InvalidCertificate(e) => {
                            format!("{cert_label} is not a valid certificate: {e}")
                        }
                        e => format!("{key_label} is not a usable private key: {e}"),
                    })
                },
            )?;
            config = config.identity(Identity::from_pem(&*cert_pem, &*key_pem));
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }
}

/// The certificates of a PEM text; at least one.
fn certificates(pem: &[u8], label: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidInput(format!("{label} is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{label} holds no PEM certificate"
        )));
    }
    Ok(certs)
}
