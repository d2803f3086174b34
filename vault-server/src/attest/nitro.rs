//! The verifier of AWS Nitro Enclaves attestation documents.
//!
//! A document is a COSE_Sign1 (RFC 9052; tagged or not) signed with ES384
//! by a leaf certificate that the document carries, whose chain (the
//! document's `cabundle`) leads to a pinned root: AWS's Nitro Enclaves
//! root G1 in production, a test root in the tests. Its payload is a CBOR
//! map: `module_id`, `digest` (`SHA384`), `timestamp` (ms), `pcrs` (index
//! → 48 bytes; PCR0 measures the enclave image), `certificate`,
//! `cabundle`, and optional `public_key`, `user_data` and `nonce`.
//!
//! This module checks the structure, the chain (at the document's time)
//! and the signature; what the document must say (nonce, age, region
//! claim, approved PCR0) is the gate's ([`super::release_gate`]).

use coset::cbor::value::Value;
use coset::{iana, CborSerializable, CoseSign1, TaggedCborSerializable};
use rustls::pki_types::{CertificateDer, UnixTime};
use x509_cert::der::Decode;

use crate::keys::seal::Measurement;

/// AWS Nitro Enclaves Root-G1 (CN=aws.nitro-enclaves, O=Amazon; valid
/// 2019-10-28 to 2049-10-28), from
/// <https://aws-nitro-enclaves.amazonaws.com/AWS_NitroEnclaves_Root-G1.zip>.
/// Its SHA-256 fingerprint, as AWS publishes it, is checked by a test.
pub const AWS_NITRO_ROOT_G1_PEM: &str = "-----BEGIN CERTIFICATE-----
MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYD
VQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4
MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL
DANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEG
BSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb
48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZE
h8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkF
R+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYC
MQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPW
rfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6N
IwLz3/Y=
-----END CERTIFICATE-----
";

/// The largest document taken (NSM documents are under 10 KB).
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024;

/// What a verified document says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// The enclave's id.
    pub module_id: String,
    /// When the NSM made it (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// PCR0: the enclave image's measurement.
    pub pcr0: Measurement,
    /// The nonce it carries (empty if none).
    pub nonce: Vec<u8>,
    /// The user data the enclave put in it (empty if none).
    pub user_data: Vec<u8>,
}

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NitroError {
    /// Not a COSE_Sign1 attestation document, or a field of the wrong type.
    #[error("malformed attestation document: {0}")]
    Malformed(String),
    /// The leaf certificate's chain does not lead to the pinned root.
    #[error("the attestation document's certificate chain does not lead to the pinned root: {0}")]
    Chain(String),
    /// The COSE signature does not verify under the leaf certificate.
    #[error("the attestation document's signature does not verify")]
    Signature,
}

fn malformed(what: impl Into<String>) -> NitroError {
    NitroError::Malformed(what.into())
}

/// Verifies documents against one pinned root.
#[derive(Clone)]
pub struct NitroVerifier {
    root_der: Vec<u8>,
}

impl std::fmt::Debug for NitroVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NitroVerifier(root sha256 {})",
            hex::encode(self.root_fingerprint())
        )
    }
}

impl NitroVerifier {
    /// Pinned to AWS's Nitro Enclaves root G1.
    pub fn aws() -> Result<NitroVerifier, NitroError> {
        Self::from_pem(AWS_NITRO_ROOT_G1_PEM)
    }

    /// Pinned to the root certificate in `pem`.
    pub fn from_pem(pem: &str) -> Result<NitroVerifier, NitroError> {
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body)
            .map_err(|_| malformed("the root is not a PEM certificate"))?;
        Self::from_der(der)
    }

    /// Pinned to the root certificate `der`.
    pub fn from_der(der: Vec<u8>) -> Result<NitroVerifier, NitroError> {
        let cert = CertificateDer::from(der.as_slice());
        webpki::anchor_from_trusted_cert(&cert)
            .map_err(|e| malformed(format!("the root certificate is unusable: {e}")))?;
        Ok(NitroVerifier { root_der: der })
    }

    /// The SHA-256 of the pinned root's DER.
    pub fn root_fingerprint(&self) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(&self.root_der).into()
    }

    /// Checks a document's structure, chain and signature; returns what
    /// it says. The chain is checked at the document's own time.
    pub fn verify(&self, document: &[u8]) -> Result<Attested, NitroError> {
        if document.len() > MAX_DOCUMENT_BYTES {
            return Err(malformed(format!(
                "{} bytes, more than {MAX_DOCUMENT_BYTES}",
                document.len()
            )));
        }
        let sign1 = CoseSign1::from_tagged_slice(document)
            .or_else(|_| CoseSign1::from_slice(document))
            .map_err(|_| malformed("not a COSE_Sign1 structure"))?;
        let es384 = coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES384);
        if sign1.protected.header.alg.as_ref() != Some(&es384) {
            return Err(malformed("its signature algorithm is not ES384"));
        }
        let payload = sign1
            .payload
            .as_deref()
            .ok_or_else(|| malformed("no payload"))?;
        let fields = Payload::parse(payload)?;

        // The chain, at the document's time.
        let leaf = CertificateDer::from(fields.certificate.as_slice());
        let ee = webpki::EndEntityCert::try_from(&leaf)
            .map_err(|e| NitroError::Chain(format!("leaf certificate: {e}")))?;
        let root = CertificateDer::from(self.root_der.as_slice());
        let anchor = webpki::anchor_from_trusted_cert(&root)
            .map_err(|e| NitroError::Chain(format!("root certificate: {e}")))?;
        let intermediates: Vec<CertificateDer<'_>> = fields
            .cabundle
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_millis(fields.timestamp_ms));
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &intermediates,
            at,
            AnyUsage,
            None,
            None,
        )
        .map_err(|e| NitroError::Chain(e.to_string()))?;

        // The signature, by the leaf's P-384 key.
        let cert = x509_cert::Certificate::from_der(&fields.certificate)
            .map_err(|_| NitroError::Chain("the leaf certificate does not parse".into()))?;
        let public_key = cert
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes()
            .to_vec();
        sign1.verify_signature(b"", |signature, data| {
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P384_SHA384_FIXED,
                &public_key,
            )
            .verify(data, signature)
            .map_err(|_| NitroError::Signature)
        })?;

        Ok(Attested {
            module_id: fields.module_id,
            timestamp_ms: fields.timestamp_ms,
            pcr0: fields.pcr0,
            nonce: fields.nonce,
            user_data: fields.user_data,
        })
    }
}

/// The leaf's extended key usage is not what makes it AWS's: any (well
/// formed) is taken; the chain to the pinned root is what counts.
struct AnyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for id in iter {
            id?;
        }
        Ok(())
    }
}

/// The payload's fields this verifier uses.
struct Payload {
    module_id: String,
    timestamp_ms: u64,
    pcr0: Measurement,
    certificate: Vec<u8>,
    cabundle: Vec<Vec<u8>>,
    nonce: Vec<u8>,
    user_data: Vec<u8>,
}

impl Payload {
    fn parse(bytes: &[u8]) -> Result<Payload, NitroError> {
        let value: Value = coset::cbor::de::from_reader(bytes)
            .map_err(|_| malformed("its payload is not CBOR"))?;
        let Value::Map(entries) = value else {
            return Err(malformed("its payload is not a map"));
        };
        let mut module_id = None;
        let mut digest = None;
        let mut timestamp_ms = None;
        let mut pcr0 = None;
        let mut certificate = None;
        let mut cabundle = None;
        let mut nonce = Vec::new();
        let mut user_data = Vec::new();
        let bytes_of = |v: Value, what: &str| match v {
            Value::Bytes(b) => Ok(b),
            _ => Err(malformed(format!("{what} is not a byte string"))),
        };
        let optional = |v: Value, what: &str| match v {
            Value::Null => Ok(Vec::new()),
            v => bytes_of(v, what),
        };
        for (key, value) in entries {
            let Value::Text(key) = key else {
                return Err(malformed("a payload key is not text"));
            };
            match key.as_str() {
                "module_id" => match value {
                    Value::Text(t) if !t.is_empty() => module_id = Some(t),
                    _ => return Err(malformed("module_id is not text")),
                },
                "digest" => match value {
                    Value::Text(t) => digest = Some(t),
                    _ => return Err(malformed("digest is not text")),
                },
                "timestamp" => {
                    let ms = value
                        .as_integer()
                        .and_then(|i| u64::try_from(i).ok())
                        .ok_or_else(|| malformed("timestamp is not an unsigned integer"))?;
                    timestamp_ms = Some(ms);
                }
                "pcrs" => {
                    let Value::Map(pcrs) = value else {
                        return Err(malformed("pcrs is not a map"));
                    };
                    if pcrs.is_empty() || pcrs.len() > 32 {
                        return Err(malformed("pcrs holds 1 to 32 registers"));
                    }
                    for (index, pcr) in pcrs {
                        let index = index
                            .as_integer()
                            .and_then(|i| u8::try_from(i).ok())
                            .filter(|i| *i < 32)
                            .ok_or_else(|| malformed("a PCR index is not 0 to 31"))?;
                        let pcr = bytes_of(pcr, "a PCR")?;
                        if pcr.len() != 48 {
                            return Err(malformed("a PCR is not 48 bytes (SHA-384)"));
                        }
                        if index == 0 {
                            let mut m = [0u8; 48];
                            m.copy_from_slice(&pcr);
                            pcr0 = Some(m);
                        }
                    }
                }
                "certificate" => certificate = Some(bytes_of(value, "certificate")?),
                "cabundle" => {
                    let Value::Array(certs) = value else {
                        return Err(malformed("cabundle is not an array"));
                    };
                    if certs.is_empty() || certs.len() > 8 {
                        return Err(malformed("cabundle holds 1 to 8 certificates"));
                    }
                    cabundle = Some(
                        certs
                            .into_iter()
                            .map(|c| bytes_of(c, "a cabundle entry"))
                            .collect::<Result<Vec<_>, _>>()?,
                    );
                }
                "nonce" => nonce = optional(value, "nonce")?,
                "user_data" => user_data = optional(value, "user_data")?,
                "public_key" => {
                    optional(value, "public_key")?;
                }
                // A field added by a later NSM is no reason to refuse.
                _ => {}
            }
        }
        if digest.as_deref() != Some("SHA384") {
            return Err(malformed("digest is not SHA384"));
        }
        Ok(Payload {
            module_id: module_id.ok_or_else(|| malformed("no module_id"))?,
            timestamp_ms: timestamp_ms.ok_or_else(|| malformed("no timestamp"))?,
            pcr0: pcr0.ok_or_else(|| malformed("no PCR0"))?,
            certificate: certificate.ok_or_else(|| malformed("no certificate"))?,
            cabundle: cabundle.ok_or_else(|| malformed("no cabundle"))?,
            nonce,
            user_data,
        })
    }
}

/// Makes attestation documents under a root of its own, as an NSM would
/// under AWS's: for tests (this machine has no enclave), never for a
/// server. The root is P-384, with one intermediate and a leaf, as AWS's
/// chains are.
#[cfg(any(test, feature = "test-attestation"))]
pub mod testing {
    use coset::{iana, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, PKCS_ECDSA_P384_SHA384};

    use super::Value;

    /// A test NSM: its root (to pin) and the leaf key that signs.
    pub struct TestNsm {
        /// The root certificate, PEM.
        pub root_pem: String,
        root_der: Vec<u8>,
        chain: Vec<Vec<u8>>,
        leaf_der: Vec<u8>,
        leaf_pkcs8: Vec<u8>,
    }

    impl std::fmt::Debug for TestNsm {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("TestNsm")
        }
    }

    /// What a document says, for [`TestNsm::document`].
    #[derive(Debug, Clone)]
    pub struct Claims {
        /// PCR0.
        pub pcr0: [u8; 48],
        /// ms since the epoch.
        pub timestamp_ms: u64,
        /// The nonce.
        pub nonce: Vec<u8>,
        /// The user data.
        pub user_data: Vec<u8>,
    }

    impl TestNsm {
        /// A new root, intermediate and leaf.
        pub fn new(name: &str) -> TestNsm {
            let ca = |cn: &str| {
                let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
                p.distinguished_name
                    .push(rcgen::DnType::CommonName, cn.to_owned());
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p
            };
            let root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).expect("key");
            let root = ca(&format!("{name} root"))
                .self_signed(&root_key)
                .expect("root");
            let mid_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).expect("key");
            let root_issuer = rcgen::Issuer::new(ca(&format!("{name} root")), &root_key);
            let mid = ca(&format!("{name} intermediate"))
                .signed_by(&mid_key, &root_issuer)
                .expect("intermediate");
            let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).expect("key");
            let mid_issuer = rcgen::Issuer::new(ca(&format!("{name} intermediate")), &mid_key);
            let mut lp = CertificateParams::new(Vec::<String>::new()).expect("params");
            lp.distinguished_name
                .push(rcgen::DnType::CommonName, format!("{name} enclave"));
            let leaf = lp.signed_by(&leaf_key, &mid_issuer).expect("leaf");
            TestNsm {
                root_pem: root.pem(),
                root_der: root.der().to_vec(),
                chain: vec![root.der().to_vec(), mid.der().to_vec()],
                leaf_der: leaf.der().to_vec(),
                leaf_pkcs8: leaf_key.serialize_der(),
            }
        }

        /// The root's DER.
        pub fn root_der(&self) -> Vec<u8> {
            self.root_der.clone()
        }

        /// Writes the root (`root.pem`) and the signing material
        /// (`nsm.hex`: one hex line each for the chain's certificates, the
        /// leaf and its PKCS#8 key) to `dir`, for a test NSM of another
        /// process ([`TestNsm::load`]).
        pub fn save(&self, dir: &std::path::Path) -> std::io::Result<()> {
            std::fs::write(dir.join("root.pem"), &self.root_pem)?;
            let mut lines: Vec<String> = self.chain.iter().map(hex::encode).collect();
            lines.push(hex::encode(&self.leaf_der));
            lines.push(hex::encode(&self.leaf_pkcs8));
            std::fs::write(dir.join("nsm.hex"), lines.join("\n"))
        }

        /// The test NSM [`TestNsm::save`] wrote to `dir`.
        pub fn load(dir: &std::path::Path) -> std::io::Result<TestNsm> {
            let bad =
                |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
            let root_pem = std::fs::read_to_string(dir.join("root.pem"))?;
            let text = std::fs::read_to_string(dir.join("nsm.hex"))?;
            let mut parts = text
                .lines()
                .map(hex::decode)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| bad("nsm.hex is not hex"))?;
            if parts.len() < 3 {
                return Err(bad("nsm.hex holds a chain, a leaf and a key"));
            }
            let leaf_pkcs8 = parts.pop().ok_or_else(|| bad("no key"))?;
            let leaf_der = parts.pop().ok_or_else(|| bad("no leaf"))?;
            Ok(TestNsm {
                root_pem,
                root_der: parts[0].clone(),
                chain: parts,
                leaf_der,
                leaf_pkcs8,
            })
        }

        /// A signed document saying `claims` (tagged COSE_Sign1, ES384).
        pub fn document(&self, claims: &Claims) -> Vec<u8> {
            let map = |entries: Vec<(Value, Value)>| Value::Map(entries);
            let payload = map(vec![
                (
                    Value::Text("module_id".into()),
                    Value::Text("i-test-enc0".into()),
                ),
                (Value::Text("digest".into()), Value::Text("SHA384".into())),
                (
                    Value::Text("timestamp".into()),
                    Value::Integer(claims.timestamp_ms.into()),
                ),
                (
                    Value::Text("pcrs".into()),
                    map(vec![
                        (Value::Integer(0.into()), Value::Bytes(claims.pcr0.to_vec())),
                        (Value::Integer(1.into()), Value::Bytes(vec![1; 48])),
                        (Value::Integer(2.into()), Value::Bytes(vec![2; 48])),
                    ]),
                ),
                (
                    Value::Text("certificate".into()),
                    Value::Bytes(self.leaf_der.clone()),
                ),
                (
                    Value::Text("cabundle".into()),
                    Value::Array(self.chain.iter().cloned().map(Value::Bytes).collect()),
                ),
                (Value::Text("public_key".into()), Value::Null),
                (
                    Value::Text("user_data".into()),
                    Value::Bytes(claims.user_data.clone()),
                ),
                (
                    Value::Text("nonce".into()),
                    Value::Bytes(claims.nonce.clone()),
                ),
            ]);
            let mut payload_bytes = Vec::new();
            coset::cbor::ser::into_writer(&payload, &mut payload_bytes).expect("CBOR");
            let key = ring::signature::EcdsaKeyPair::from_pkcs8(
                &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                &self.leaf_pkcs8,
                &ring::rand::SystemRandom::new(),
            )
            .expect("leaf key");
            CoseSign1Builder::new()
                .protected(
                    HeaderBuilder::new()
                        .algorithm(iana::Algorithm::ES384)
                        .build(),
                )
                .payload(payload_bytes)
                .create_signature(b"", |data| {
                    key.sign(&ring::rand::SystemRandom::new(), data)
                        .expect("sign")
                        .as_ref()
                        .to_vec()
                })
                .build()
                .to_tagged_vec()
                .expect("COSE")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{Claims, TestNsm};
    use super::*;

    fn claims() -> Claims {
        Claims {
            pcr0: [7; 48],
            timestamp_ms: 1_800_000_000_000,
            nonce: vec![9; 32],
            user_data: b"vault-region=eu".to_vec(),
        }
    }

    #[test]
    fn the_pinned_aws_root_is_the_one_aws_publishes() {
        let v = NitroVerifier::aws().unwrap();
        // docs.aws.amazon.com/enclaves/latest/user/verify-root.html
        assert_eq!(
            hex::encode_upper(v.root_fingerprint()),
            "641A0321A3E244EFE456463195D606317ED7CDCC3C1756E09893F3C68F79BB5B"
        );
    }

    #[test]
    fn a_document_under_the_pinned_root_verifies_and_says_what_it_claims() {
        let nsm = TestNsm::new("t");
        let v = NitroVerifier::from_pem(&nsm.root_pem).unwrap();
        let att = v.verify(&nsm.document(&claims())).unwrap();
        assert_eq!(att.pcr0, [7; 48]);
        assert_eq!(att.nonce, vec![9; 32]);
        assert_eq!(att.user_data, b"vault-region=eu");
        assert_eq!(att.timestamp_ms, 1_800_000_000_000);
        assert_eq!(att.module_id, "i-test-enc0");
    }

    #[test]
    fn another_root_a_broken_signature_and_malformed_bytes_are_refused() {
        let nsm = TestNsm::new("t");
        let other = TestNsm::new("other");
        let v = NitroVerifier::from_der(nsm.root_der()).unwrap();
        let doc = other.document(&claims());
        assert!(
            matches!(v.verify(&doc), Err(NitroError::Chain(_))),
            "{:?}",
            v.verify(&doc)
        );
        // The AWS root refuses the test root's documents too.
        assert!(matches!(
            NitroVerifier::aws()
                .unwrap()
                .verify(&nsm.document(&claims())),
            Err(NitroError::Chain(_))
        ));
        // One bit of the signature flipped (it is the document's tail).
        let mut doc = nsm.document(&claims());
        let last = doc.len() - 1;
        doc[last] ^= 1;
        assert_eq!(v.verify(&doc), Err(NitroError::Signature));
        // Every truncation and a sample of byte flips: an error, never a panic.
        let doc = nsm.document(&claims());
        for n in (0..doc.len()).step_by(7) {
            assert!(v.verify(&doc[..n]).is_err(), "prefix {n}");
        }
        for i in (0..doc.len()).step_by(3) {
            let mut d = doc.clone();
            d[i] ^= 0x80;
            assert!(v.verify(&d).is_err(), "byte {i}");
        }
        assert!(matches!(
            v.verify(&vec![0u8; MAX_DOCUMENT_BYTES + 1]),
            Err(NitroError::Malformed(_))
        ));
    }
}
