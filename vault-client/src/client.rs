//! The typed async client and its builder.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};
use vault_proto::v1 as pb;
use vault_proto::v1::admin_service_client::AdminServiceClient;
use vault_proto::v1::audit_service_client::AuditServiceClient;
use vault_proto::v1::operator_service_client::OperatorServiceClient;
use vault_proto::v1::subject_service_client::SubjectServiceClient;
use vault_proto::v1::vault_service_client::VaultServiceClient;

use crate::audit::{Hash, LedgerEntry, LedgerPage, VerifierKey};
use crate::custody::{
    Initialized, ReindexProgress, RekeyProgress, RewrapProgress, RootKeys, SealStatus,
    SubjectKeyRotation, UnsealProgress, UnsealShare,
};
use crate::error::{Error, Result};
use crate::policy::PolicyCheck;
use crate::receipt::ErasureReceipt;
use crate::tls::{Pem, TlsOptions};
use crate::types::{BatchGet, Collection, Record, Value};

/// The deadline of every call unless [`ClientBuilder::timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer the client accepts (a full batch of large records).
const MAX_DECODING_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// The metadata key of the caller's purpose.
pub const PURPOSE_METADATA_KEY: &str = "x-vault-purpose";

/// Adds the bearer token (if any: a client certificate may stand alone)
/// and the purpose to every request.
#[derive(Clone)]
struct Credentials {
    authorization: Option<AsciiMetadataValue>,
    purpose: Option<AsciiMetadataValue>,
}

impl Credentials {
    /// No token: the connection's client certificate authenticates.
    fn certificate_only(purpose: Option<&str>) -> Result<Self> {
        Ok(Self {
            authorization: None,
            purpose: purpose.map(purpose_metadata).transpose()?,
        })
    }

    fn new(token: &str, purpose: Option<&str>) -> Result<Self> {
        if token.is_empty() {
            return Err(Error::InvalidInput("the token is empty".into()));
        }
        // gRPC metadata values are printable ASCII; a token has no spaces.
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidInput(
                "the token may only have visible ASCII characters".into(),
            ));
        }
        let mut authorization = ascii_metadata(&format!("Bearer {token}"), "token")?;
        authorization.set_sensitive(true);
        Ok(Self {
            authorization: Some(authorization),
            purpose: purpose.map(purpose_metadata).transpose()?,
        })
    }
}

/// The purpose as a metadata value: printable ASCII.
fn purpose_metadata(purpose: &str) -> Result<AsciiMetadataValue> {
    if !purpose.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(Error::InvalidInput(
            "the purpose may only have printable ASCII characters".into(),
        ));
    }
    ascii_metadata(purpose, "purpose")
}

fn ascii_metadata(text: &str, what: &str) -> Result<AsciiMetadataValue> {
    MetadataValue::try_from(text).map_err(|_| {
        Error::InvalidInput(format!(
            "the {what} has characters not allowed in gRPC metadata"
        ))
    })
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        let metadata = request.metadata_mut();
        if let Some(authorization) = &self.authorization {
            metadata.insert("authorization", authorization.clone());
        }
        if let Some(purpose) = &self.purpose {
            metadata.insert(PURPOSE_METADATA_KEY, purpose.clone());
        }
        Ok(request)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "Bearer <redacted>"),
            )
            .field("purpose", &self.purpose)
            .finish()
    }
}

/// Adds `scheme://` to an address without a scheme.
fn with_scheme(addr: &str, scheme: &str) -> String {
    let addr = addr.trim();
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("{scheme}://{addr}")
    }
}

/// Builds a [`VaultClient`]:
/// `VaultClient::builder(addr).token(t).purpose(p).timeout(d).connect().await`.
///
/// Over TLS (an `https://` address): `.ca_certificate_file(path)` (or
/// `_pem`) names the CA that signed the vault's certificate (the system's
/// trusted roots otherwise), and `.client_identity_files(cert, key)` (or
/// `_pem`) presents a client certificate for mutual TLS; the token is then
/// optional, since the certificate names the caller.
///
/// A builder is `Clone`: one set up with a token, purpose, timeouts and TLS
/// options serves as a template for several vaults
/// ([`ClientBuilder::address`] changes the address of a copy), as a
/// [`RegionalClient`](crate::RegionalClient) is made for every endpoint of
/// its region map.
/// Clones copy any PEM key given as text; each copy is wiped when dropped.
#[derive(Clone)]
pub struct ClientBuilder {
    addr: String,
    token: Option<String>,
    purpose: Option<String>,
    timeout: Duration,
    connect_timeout: Option<Duration>,
    tls: TlsOptions,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("purpose", &self.purpose)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

impl ClientBuilder {
    /// A builder for the vault at `addr` (`http://host:port` or
    /// `https://host:port`; a bare `host:port` gets `http://`, or `https://`
    /// when a TLS option is set).
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            token: None,
            purpose: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: None,
            tls: TlsOptions::default(),
        }
    }

    /// The address of the vault, replacing the one given to
    /// [`ClientBuilder::new`] (same forms).
    #[must_use]
    pub fn address(mut self, addr: impl Into<String>) -> Self {
        self.addr = addr.into();
        self
    }

    /// The bearer token sent as `authorization: Bearer <token>`. Required,
    /// unless a client certificate is given
    /// ([`ClientBuilder::client_identity_files`]); with both, the vault
    /// requires the token to be bound to the certificate's principal.
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The purpose sent as `x-vault-purpose` (for example `support-ticket`).
    #[must_use]
    pub fn purpose(mut self, purpose: impl Into<String>) -> Self {
        self.purpose = Some(purpose.into());
        self
    }

    /// The deadline of each call (default 10 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long to wait for the connection (default: the call deadline).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The CA certificate(s) (PEM) that the vault's TLS certificate must
    /// chain to, instead of the system's trusted roots.
    #[must_use]
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.ca = Some(Pem::Text(pem.into().into()));
        self
    }

    /// As [`ClientBuilder::ca_certificate_pem`], read from a file when
    /// connecting (errors name the file).
    #[must_use]
    pub fn ca_certificate_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca = Some(Pem::File(path.into()));
        self
    }

    /// The client certificate chain and its private key (PEM) to present
    /// for mutual TLS. The key is wiped from memory when the builder drops.
    #[must_use]
    pub fn client_identity_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.identity = Some((
            Pem::Text(cert_pem.into().into()),
            Pem::Text(key_pem.into().into()),
        ));
        self
    }

    /// As [`ClientBuilder::client_identity_pem`], read from files when
    /// connecting (errors name the file).
    #[must_use]
    pub fn client_identity_files(
        mut self,
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Self {
        self.tls.identity = Some((Pem::File(cert_path.into()), Pem::File(key_path.into())));
        self
    }

    /// The name the vault's certificate must carry (default: the host of
    /// the address).
    #[must_use]
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.tls.server_name = Some(name.into());
        self
    }

    /// The address with its scheme: `https://` for a bare address when a
    /// TLS option is set.
    fn full_addr(&self) -> String {
        with_scheme(&self.addr, if self.tls.any() { "https" } else { "http" })
    }

    fn endpoint(&self) -> Result<(Endpoint, Credentials)> {
        let credentials = match self.token.as_deref() {
            Some(token) => Credentials::new(token, self.purpose.as_deref())?,
            None if self.tls.has_identity() => {
                Credentials::certificate_only(self.purpose.as_deref())?
            }
            None => {
                return Err(Error::InvalidInput(
                    "no token given (and no client certificate)".into(),
                ))
            }
        };
        let addr = self.full_addr();
        let mut endpoint = Endpoint::from_shared(addr.clone())
            .map_err(|e| Error::InvalidInput(format!("bad vault address `{addr}`: {e}")))?
            .connect_timeout(self.connect_timeout.unwrap_or(self.timeout))
            .tcp_nodelay(true);
        if addr.starts_with("https://") {
            endpoint = endpoint
                .tls_config(self.tls.client_config()?)
                .map_err(|e| {
                    Error::InvalidInput(format!("TLS: {}", crate::error::error_chain(&e)))
                })?;
        } else if self.tls.any() {
            return Err(Error::InvalidInput(format!(
                "a CA certificate, client certificate or TLS server name needs an https:// \
                 address, not `{addr}`"
            )));
        }
        Ok((endpoint, credentials))
    }

    fn finish(self, channel: Channel, credentials: Credentials) -> VaultClient {
        VaultClient {
            stubs: Stubs::new(channel.clone(), credentials.clone()),
            credentials,
            channel,
            addr: self.full_addr(),
            purpose: self.purpose,
            timeout: self.timeout,
        }
    }

    /// Connects to the vault; fails with [`Error::Connect`] if it cannot be
    /// reached (or the TLS handshake fails) and [`Error::InvalidInput`] for a
    /// bad address, a missing token, a token or purpose that cannot be sent
    /// as metadata, or an unreadable or malformed certificate or key.
    ///
    /// Under TLS 1.3 the vault checks a client certificate after the client
    /// has finished its handshake, so a refused certificate may surface as
    /// [`Error::Connect`] on the first call rather than here.
    pub async fn connect(self) -> Result<VaultClient> {
        let (endpoint, credentials) = self.endpoint()?;
        let channel = endpoint.connect().await?;
        Ok(self.finish(channel, credentials))
    }

    /// A client that connects on its first call (and reconnects as needed);
    /// only the address, token, purpose and TLS files are checked here.
    /// Needs a Tokio runtime.
    pub fn connect_lazy(self) -> Result<VaultClient> {
        let (endpoint, credentials) = self.endpoint()?;
        let channel = endpoint.connect_lazy();
        Ok(self.finish(channel, credentials))
    }
}

type Authenticated = InterceptedService<Channel, Credentials>;

/// The generated clients of the five services, over one channel with one
/// set of credentials.
#[derive(Clone)]
struct Stubs {
    vault: VaultServiceClient<Authenticated>,
    operator: OperatorServiceClient<Authenticated>,
    subject: SubjectServiceClient<Authenticated>,
    admin: AdminServiceClient<Authenticated>,
    audit: AuditServiceClient<Authenticated>,
}

impl Stubs {
    fn new(channel: Channel, credentials: Credentials) -> Self {
        Self {
            vault: VaultServiceClient::with_interceptor(channel.clone(), credentials.clone())
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            operator: OperatorServiceClient::with_interceptor(channel.clone(), credentials.clone()),
            subject: SubjectServiceClient::with_interceptor(channel.clone(), credentials.clone())
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            admin: AdminServiceClient::with_interceptor(channel.clone(), credentials.clone()),
            // A page of audit events (the vault keeps one under 4 MiB,
            // unless a single event is larger).
            audit: AuditServiceClient::with_interceptor(channel, credentials)
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
        }
    }
}

/// A typed async client of one regional vault.
///
/// Every call sends `authorization: Bearer <token>` and, if set,
/// `x-vault-purpose: <purpose>`, and fails with [`Error::Timeout`] after the
/// deadline. Cloning is cheap and clones share the connection. `Debug` never
/// shows the token.
///
/// ```no_run
/// # async fn demo() -> vault_client::Result<()> {
/// use vault_client::{Record, VaultClient};
///
/// let vault = VaultClient::builder("http://127.0.0.1:8200")
///     .token("dev-token")
///     .purpose("support-ticket")
///     .connect()
///     .await?;
/// vault.put(&Record::new("users", "u1", "subject-1").with("email", "a@b.eu")).await?;
/// let record = vault.get_fields("users", "u1", &["email"]).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct VaultClient {
    stubs: Stubs,
    credentials: Credentials,
    channel: Channel,
    addr: String,
    purpose: Option<String>,
    timeout: Duration,
}

impl fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultClient")
            .field("addr", &self.addr)
            .field("token", &"<redacted>")
            .field("purpose", &self.purpose)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl VaultClient {
    /// Connects to the vault at `addr` with `token`, no purpose and the
    /// default deadline.
    pub async fn connect(addr: impl Into<String>, token: impl Into<String>) -> Result<Self> {
        Self::builder(addr).token(token).connect().await
    }

    /// A builder for the vault at `addr`.
    pub fn builder(addr: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(addr)
    }

    /// The vault's address, with its scheme.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The purpose sent with every call, if any.
    pub fn purpose(&self) -> Option<&str> {
        self.purpose.as_deref()
    }

    /// The deadline of each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A client sharing this one's connection and token, with another
    /// deadline.
    #[must_use]
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            timeout,
            ..self.clone()
        }
    }

    /// A client sharing this one's connection, token and deadline, sending
    /// another purpose (`None` sends none).
    pub fn with_purpose(&self, purpose: Option<&str>) -> Result<Self> {
        let mut credentials = self.credentials.clone();
        credentials.purpose = purpose.map(purpose_metadata).transpose()?;
        Ok(Self {
            stubs: Stubs::new(self.channel.clone(), credentials.clone()),
            credentials,
            channel: self.channel.clone(),
            addr: self.addr.clone(),
            purpose: purpose.map(str::to_owned),
            timeout: self.timeout,
        })
    }

    /// Runs one `VaultService` call with the deadline, classifying its
    /// failure.
    async fn call<Req, Resp, F, Fut>(&self, message: Req, rpc: F) -> Result<Resp>
    where
        F: FnOnce(VaultServiceClient<Authenticated>, Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<Response<Resp>, Status>>,
    {
        self.run(self.stubs.vault.clone(), message, rpc).await
    }

    /// Runs one `OperatorService` call, as [`VaultClient::call`] does.
    async fn operator_call<Req, Resp, F, Fut>(&self, message: Req, rpc: F) -> Result<Resp>
    where
        F: FnOnce(OperatorServiceClient<Authenticated>, Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<Response<Resp>, Status>>,
    {
        self.run(self.stubs.operator.clone(), message, rpc).await
    }

    /// Runs one call on `stub` with the deadline, classifying its failure.
    async fn run<Stub, Req, Resp, F, Fut>(&self, stub: Stub, message: Req, rpc: F) -> Result<Resp>
    where
        F: FnOnce(Stub, Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<Response<Resp>, Status>>,
    {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        let started = Instant::now();
        match tokio::time::timeout(self.timeout, rpc(stub, request)).await {
            Err(_elapsed) => Err(Error::Timeout),
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status))
                if status.code() == Code::Cancelled && started.elapsed() >= self.timeout =>
            {
                Err(Error::Timeout)
            }
            Ok(Err(status)) => Err(status.into()),
        }
    }

    /// Creates a collection and returns it as stored (its region filled in).
    /// Fails with [`Error::AlreadyExists`] if the name is taken.
    pub async fn create_collection(&self, collection: &Collection) -> Result<Collection> {
        let request = pb::CreateCollectionRequest {
            collection: Some(collection.into()),
        };
        let response = self
            .call(
                request,
                |mut c, r| async move { c.create_collection(r).await },
            )
            .await?;
        response
            .collection
            .ok_or_else(|| missing("CreateCollectionResponse.collection"))?
            .try_into()
    }

    /// Returns one collection's schema; [`Error::NotFound`] if there is none.
    pub async fn collection(&self, name: &str) -> Result<Collection> {
        let request = pb::GetCollectionRequest {
            name: name.to_owned(),
        };
        let response = self
            .call(request, |mut c, r| async move { c.get_collection(r).await })
            .await?;
        response
            .collection
            .ok_or_else(|| missing("GetCollectionResponse.collection"))?
            .try_into()
    }

    /// Lists every collection of the vault, ordered by name.
    pub async fn collections(&self) -> Result<Vec<Collection>> {
        let response = self
            .call(pb::ListCollectionsRequest {}, |mut c, r| async move {
                c.list_collections(r).await
            })
            .await?;
        response
            .collections
            .into_iter()
            .map(Collection::try_from)
            .collect()
    }

    /// Creates or replaces a record; returns once it is durable.
    pub async fn put(&self, record: &Record) -> Result<()> {
        refuse_partial(record)?;
        let request = pb::PutRecordRequest {
            record: Some(record.into()),
        };
        self.call(request, |mut c, r| async move { c.put_record(r).await })
            .await?;
        Ok(())
    }

    /// Reads a whole record; [`Error::NotFound`] if there is none.
    pub async fn get(&self, collection: &str, id: &str) -> Result<Record> {
        self.get_fields(collection, id, &[]).await
    }

    /// Reads the named fields of a record (all of them if `fields` is empty);
    /// only those are decrypted. Fields the record lacks are left out.
    pub async fn get_fields(&self, collection: &str, id: &str, fields: &[&str]) -> Result<Record> {
        let request = pb::GetRecordRequest {
            collection: collection.to_owned(),
            id: id.to_owned(),
            fields: to_strings(fields),
        };
        let response = self
            .call(request, |mut c, r| async move { c.get_record(r).await })
            .await?;
        response
            .record
            .ok_or_else(|| missing("GetRecordResponse.record"))?
            .try_into()
    }

    /// Finds the records of `collection` whose indexed `field` equals
    /// `value` (a string is compared trimmed and lower-cased), at most
    /// `limit` (1 to 500), with the named `fields` (all if empty) as the
    /// caller's search rules show them. Needs the `search` operation.
    pub async fn find(
        &self,
        collection: &str,
        field: &str,
        value: impl Into<Value>,
        fields: &[&str],
        limit: u32,
    ) -> Result<Vec<Record>> {
        let value: Value = value.into();
        let request = pb::FindRecordsRequest {
            collection: collection.to_owned(),
            field: field.to_owned(),
            value: Some(pb::Value::from(&value)),
            fields: to_strings(fields),
            limit,
        };
        let response = self
            .call(request, |mut c, r| async move { c.find_records(r).await })
            .await?;
        response.records.into_iter().map(Record::try_from).collect()
    }

    /// Deletes a record; returns whether there was one.
    pub async fn delete(&self, collection: &str, id: &str) -> Result<bool> {
        let request = pb::DeleteRecordRequest {
            collection: collection.to_owned(),
            id: id.to_owned(),
        };
        let response = self
            .call(request, |mut c, r| async move { c.delete_record(r).await })
            .await?;
        Ok(response.deleted)
    }

    /// Creates or replaces several records, of one or more collections,
    /// atomically; returns how many were written.
    pub async fn put_many(&self, records: &[Record]) -> Result<u32> {
        records.iter().try_for_each(refuse_partial)?;
        let request = pb::BatchPutRecordsRequest {
            records: records.iter().map(Into::into).collect(),
        };
        let response = self
            .call(
                request,
                |mut c, r| async move { c.batch_put_records(r).await },
            )
            .await?;
        Ok(response.written)
    }

    /// Reads several records of one collection, projected to `fields` (all
    /// if empty). Ids without a record are listed in
    /// [`BatchGet::missing_ids`].
    pub async fn get_many(
        &self,
        collection: &str,
        ids: &[&str],
        fields: &[&str],
    ) -> Result<BatchGet> {
        let request = pb::BatchGetRecordsRequest {
            collection: collection.to_owned(),
            ids: to_strings(ids),
            fields: to_strings(fields),
        };
        let response = self
            .call(
                request,
                |mut c, r| async move { c.batch_get_records(r).await },
            )
            .await?;
        Ok(BatchGet {
            records: response
                .records
                .into_iter()
                .map(Record::try_from)
                .collect::<Result<_>>()?,
            missing_ids: response.missing_ids,
        })
    }

    /// Creates the keyring and splits its unseal key into `shares` shares
    /// (1 to 255), any `threshold` of which unseal the vault. The shares are
    /// returned once and never stored by the vault; the vault stays sealed.
    /// [`Error::FailedPrecondition`] if it is already initialised,
    /// [`Error::InvalidInput`] for a bad count.
    ///
    /// Needs the `custodian` role, as every custody call except
    /// [`VaultClient::erase_subject`].
    pub async fn init(&self, shares: u32, threshold: u32) -> Result<Initialized> {
        self.init_with_recipients(shares, threshold, &[]).await
    }

    /// [`VaultClient::init`]; with `recipients` (one age X25519 recipient,
    /// `age1…`, per share, in order) the vault encrypts each share to its
    /// custodian and returns only the ciphertexts
    /// ([`Initialized::encrypted_shares`]): whoever runs init never sees
    /// a share. [`Error::InvalidInput`] for a malformed or repeated
    /// recipient, or not one per share.
    pub async fn init_with_recipients(
        &self,
        shares: u32,
        threshold: u32,
        recipients: &[String],
    ) -> Result<Initialized> {
        let request = pb::InitRequest {
            shares,
            threshold,
            recipients: recipients.to_vec(),
        };
        let response = self
            .operator_call(request, |mut c, r| async move { c.init(r).await })
            .await?;
        check_issued(&response.shares, &response.encrypted_shares, recipients)?;
        Ok(response.into())
    }

    /// Hands in one share of the current set towards a rekey: a new unseal
    /// key split `threshold` of `shares`, its shares encrypted to
    /// `recipients` if any are given (one per share). Every custodian's
    /// call names the same split. Once the current threshold is reached
    /// the vault re-encrypts its keyring under the new key and returns the
    /// new shares ([`RekeyProgress::complete`]); the old shares open
    /// nothing any more. The vault must be unsealed.
    /// [`Error::FailedPrecondition`] if another split is in progress.
    pub async fn rekey(
        &self,
        share: &UnsealShare,
        shares: u32,
        threshold: u32,
        recipients: &[String],
    ) -> Result<RekeyProgress> {
        self.rekey_to_seal(share, shares, threshold, recipients, "")
            .await
    }

    /// [`VaultClient::rekey`] that also moves the keyring to another seal
    /// (`"shamir"`, or `"pkcs11"`: the server's configured HSM).
    pub async fn rekey_to_seal(
        &self,
        share: &UnsealShare,
        shares: u32,
        threshold: u32,
        recipients: &[String],
        seal: &str,
    ) -> Result<RekeyProgress> {
        let request = pb::RekeyRequest {
            share: share.expose_secret().to_owned(),
            shares,
            threshold,
            recipients: recipients.to_vec(),
            cancel: false,
            seal: seal.to_owned(),
        };
        let response = self
            .operator_call(request, |mut c, r| async move { c.rekey(r).await })
            .await?;
        if response.complete {
            check_issued(&response.shares, &response.encrypted_shares, recipients)?;
        }
        Ok(response.into())
    }

    /// Asks the vault to unseal itself with its HSM (a keyring under the
    /// PKCS#11 seal), as it does at start. [`Error::FailedPrecondition`]
    /// says why it stays sealed (the token is missing, the release gate
    /// refused this build, …); [`Error::InvalidInput`] for a keyring
    /// sealed with shares. `allow_keyring_rollback` as for
    /// [`VaultClient::unseal_with`].
    pub async fn unseal_with_hsm(&self, allow_keyring_rollback: bool) -> Result<UnsealProgress> {
        let request = pb::UnsealRequest {
            share: String::new(),
            allow_keyring_rollback,
        };
        let response = self
            .operator_call(request, |mut c, r| async move { c.unseal(r).await })
            .await?;
        Ok(response.into())
    }

    /// Adds a build (its 48-byte measurement) to the approved builds:
    /// from the next unseal on, the key is released only to a server
    /// presenting an approved build. Returns whether it was new and how
    /// many builds are approved.
    pub async fn approve_build(&self, measurement: &[u8; 48]) -> Result<(bool, u32)> {
        let response = self
            .operator_call(
                pb::ApproveBuildRequest {
                    measurement: measurement.to_vec(),
                },
                |mut c, r| async move { c.approve_build(r).await },
            )
            .await?;
        Ok((response.changed, response.approved))
    }

    /// Removes a build from the approved builds. Returns whether it was
    /// approved and how many builds remain approved.
    pub async fn revoke_build(&self, measurement: &[u8; 48]) -> Result<(bool, u32)> {
        let response = self
            .operator_call(
                pb::RevokeBuildRequest {
                    measurement: measurement.to_vec(),
                },
                |mut c, r| async move { c.revoke_build(r).await },
            )
            .await?;
        Ok((response.changed, response.approved))
    }

    /// Abandons the rekey in progress, if any.
    pub async fn cancel_rekey(&self) -> Result<()> {
        let request = pb::RekeyRequest {
            cancel: true,
            ..Default::default()
        };
        self.operator_call(request, |mut c, r| async move { c.rekey(r).await })
            .await?;
        Ok(())
    }

    /// Hands in one unseal share. Once `threshold` distinct shares of the
    /// set are in, the vault opens its keyring and serves data.
    /// [`Error::InvalidInput`] for a malformed, corrupted, foreign or
    /// repeated share, and for shares that do not open the keyring (the
    /// progress is then reset); [`Error::FailedPrecondition`] if the vault
    /// is unsealed or not initialised.
    pub async fn unseal(&self, share: &UnsealShare) -> Result<UnsealProgress> {
        self.unseal_with(share, false).await
    }

    /// [`VaultClient::unseal`]; with `allow_keyring_rollback` the vault
    /// opens a keyring older than its data folder has seen (disaster
    /// recovery from a keyring backup: destroyed keys come back, erasures
    /// since are forgotten). Without it such a keyring is refused
    /// ([`Error::FailedPrecondition`]). The unseal's audit event says it.
    pub async fn unseal_with(
        &self,
        share: &UnsealShare,
        allow_keyring_rollback: bool,
    ) -> Result<UnsealProgress> {
        let request = pb::UnsealRequest {
            share: share.expose_secret().to_owned(),
            allow_keyring_rollback,
        };
        let response = self
            .operator_call(request, |mut c, r| async move { c.unseal(r).await })
            .await?;
        Ok(response.into())
    }

    /// Seals the vault: it drops every key from memory and discards unseal
    /// progress. Data calls then fail with [`Error::Unavailable`]
    /// ([`Error::is_sealed`]) until the vault is unsealed again.
    pub async fn seal(&self) -> Result<()> {
        self.operator_call(
            pb::SealRequest {},
            |mut c, r| async move { c.seal(r).await },
        )
        .await?;
        Ok(())
    }

    /// Lifts `principal`'s lockout (custody role); false if it was not
    /// locked out.
    pub async fn unlock(&self, principal: &str) -> Result<bool> {
        let response = self
            .operator_call(
                pb::UnlockRequest {
                    principal: principal.to_owned(),
                },
                |mut c, r| async move { c.unlock(r).await },
            )
            .await?;
        Ok(response.was_locked)
    }

    /// The vault's custody state: initialised, sealed, region, threshold,
    /// unseal progress and, when unsealed, its root key versions and the
    /// public key that verifies erasure receipts.
    pub async fn status(&self) -> Result<SealStatus> {
        self.operator_call(
            pb::StatusRequest {},
            |mut c, r| async move { c.status(r).await },
        )
        .await?
        .try_into()
    }

    /// Makes a new root key version current and starts the background job
    /// that re-wraps every subject key under it (see
    /// [`VaultClient::rewrap_status`]); returns the new version.
    pub async fn rotate_root_key(&self) -> Result<u32> {
        let response = self
            .operator_call(pb::RotateRootKeyRequest {}, |mut c, r| async move {
                c.rotate_root_key(r).await
            })
            .await?;
        Ok(response.version)
    }

    /// Progress of the job that re-wraps subject keys under the current
    /// root key version.
    pub async fn rewrap_status(&self) -> Result<RewrapProgress> {
        let response = self
            .operator_call(pb::RewrapStatusRequest {}, |mut c, r| async move {
                c.rewrap_status(r).await
            })
            .await?;
        Ok(response.into())
    }

    /// Makes a new blind-index key version current and starts the
    /// background job that rebuilds every blind-index row under it (see
    /// [`VaultClient::reindex_status`]); returns the new version. Refused
    /// (`FailedPrecondition`) while an earlier rebuild still runs.
    pub async fn rotate_index_key(&self) -> Result<u32> {
        let response = self
            .operator_call(pb::RotateIndexKeyRequest {}, |mut c, r| async move {
                c.rotate_index_key(r).await
            })
            .await?;
        Ok(response.version)
    }

    /// Progress of the job that rebuilds the blind index under the current
    /// index key version.
    pub async fn reindex_status(&self) -> Result<ReindexProgress> {
        let response = self
            .operator_call(pb::ReindexStatusRequest {}, |mut c, r| async move {
                c.reindex_status(r).await
            })
            .await?;
        Ok(response.into())
    }

    /// Every root key version, its state, and how many subject keys it
    /// wraps.
    pub async fn root_keys(&self) -> Result<RootKeys> {
        self.operator_call(pb::ListRootKeysRequest {}, |mut c, r| async move {
            c.list_root_keys(r).await
        })
        .await?
        .try_into()
    }

    /// Retires a root key version: it no longer unwraps.
    /// [`Error::FailedPrecondition`] while it is current or still wraps a
    /// subject key.
    pub async fn retire_root_key(&self, version: u32) -> Result<()> {
        let request = pb::RetireRootKeyRequest { version };
        self.operator_call(
            request,
            |mut c, r| async move { c.retire_root_key(r).await },
        )
        .await?;
        Ok(())
    }

    /// Destroys a retired root key version: its bytes leave the keyring
    /// file. [`Error::FailedPrecondition`] if it is not retired.
    pub async fn destroy_root_key(&self, version: u32) -> Result<()> {
        let request = pb::DestroyRootKeyRequest { version };
        self.operator_call(
            request,
            |mut c, r| async move { c.destroy_root_key(r).await },
        )
        .await?;
        Ok(())
    }

    /// Gives one subject a new key, re-encrypts every field of the
    /// subject's records under it and destroys the old key, in one atomic
    /// write.
    pub async fn rotate_subject_key(&self, subject_id: &str) -> Result<SubjectKeyRotation> {
        let request = pb::RotateSubjectKeyRequest {
            subject_id: subject_id.to_owned(),
        };
        let response = self
            .operator_call(
                request,
                |mut c, r| async move { c.rotate_subject_key(r).await },
            )
            .await?;
        Ok(response.into())
    }

    /// Crypto-shreds a data subject: the vault destroys every version of the
    /// subject's key, evicts it from every cache, deletes the subject's
    /// records, and returns a signed receipt. Erasing a subject the vault
    /// does not know is not an error (the receipt reports zero records and
    /// key versions). Needs the `custodian` or `dpo` role.
    ///
    /// The receipt is returned as received: check it with
    /// [`ErasureReceipt::verify`].
    pub async fn erase_subject(&self, subject_id: &str) -> Result<ErasureReceipt> {
        let request = pb::EraseSubjectRequest {
            subject_id: subject_id.to_owned(),
        };
        let response = self
            .run(self.stubs.subject.clone(), request, |mut c, r| async move {
                c.erase_subject(r).await
            })
            .await?;
        response
            .receipt
            .ok_or_else(|| missing("EraseSubjectResponse.receipt"))?
            .try_into()
    }

    /// One page of a data subject's access ledger: the audit events that
    /// name the subject from log index `from` (at most `limit`, 1 to 100;
    /// 0 for 100), each with its inclusion proof in the checkpoint the page
    /// carries: one signed now (`tree_size` 0), or the stored one of
    /// `tree_size` events (pass the first page's, so that every page is
    /// proved in the same tree). Check it with [`LedgerPage::verify`];
    /// fetch the next page from its `next_index`. Needs the `export`
    /// operation (the `dpo` role). The request is itself an event about
    /// the subject.
    pub async fn access_ledger(
        &self,
        subject_id: &str,
        from: u64,
        limit: u32,
        tree_size: u64,
    ) -> Result<LedgerPage> {
        let request = pb::AccessLedgerRequest {
            subject_id: subject_id.to_owned(),
            from_index: from,
            limit,
            tree_size,
        };
        let response = self
            .run(self.stubs.subject.clone(), request, |mut c, r| async move {
                c.access_ledger(r).await
            })
            .await?;
        let most = match limit {
            0 => 100,
            n => n.min(100) as usize,
        };
        if response.entries.len() > most {
            return Err(Error::Protocol(format!(
                "the vault sent {} ledger entries for a page of at most {most}",
                response.entries.len()
            )));
        }
        // The pseudonym is printed: only what a pseudonym can be (hex).
        if response.subject_pseudonym.is_empty()
            || !response
                .subject_pseudonym
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
        {
            return Err(Error::Protocol(
                "the vault named the subject by something that is not a hex pseudonym".into(),
            ));
        }
        // In order, from `from` on, and the next page after this one.
        let mut floor = from;
        for (k, e) in response.entries.iter().enumerate() {
            if e.index < floor || (k > 0 && e.index == floor) {
                return Err(Error::Protocol(format!(
                    "ledger entry {} is out of order (or before {from})",
                    e.index
                )));
            }
            floor = e.index;
        }
        if response.next_index != 0 && (response.entries.is_empty() || response.next_index <= floor)
        {
            return Err(Error::Protocol(format!(
                "the ledger's next page would start at {}, not after this one",
                response.next_index
            )));
        }
        let entries = response
            .entries
            .into_iter()
            .map(|e| {
                Ok(LedgerEntry {
                    index: e.index,
                    event: e.event,
                    proof: proof_hashes(e.proof, "inclusion")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LedgerPage {
            subject_pseudonym: response.subject_pseudonym,
            checkpoint: response.checkpoint,
            entries,
            next_index: (response.next_index != 0).then_some(response.next_index),
            verifier_key: response.verifier_key,
        })
    }

    /// Reads the vault's policy file again (as `SIGHUP` does) and returns
    /// where the policy now in force came from. A file that does not parse
    /// is refused with [`Error::InvalidInput`] naming its line, and the
    /// policy in force stays. Needs the `admin` operation
    /// ([`Error::PermissionDenied`] otherwise).
    pub async fn reload_policy(&self) -> Result<String> {
        let response = self
            .run(
                self.stubs.admin.clone(),
                pb::ReloadPolicyRequest {},
                |mut c, r| async move { c.reload_policy(r).await },
            )
            .await?;
        Ok(response.source)
    }

    /// Plants `count` (1 to 100) decoy records in `collection` (the
    /// `admin` operation) and returns their ids: a read of one raises a
    /// critical alert.
    pub async fn create_honey(&self, collection: &str, count: u32) -> Result<Vec<String>> {
        let response = self
            .run(
                self.stubs.admin.clone(),
                pb::CreateHoneyRequest {
                    collection: collection.to_owned(),
                    count,
                },
                |mut c, r| async move { c.create_honey(r).await },
            )
            .await?;
        Ok(response.record_ids)
    }

    /// What the policy in force grants `principal` (a token's principal
    /// name, or a certificate's) when it states `purpose` (`None`: no
    /// purpose). With a `collection`, each operation granted on it and how
    /// it treats every field ([`PolicyCheck::operations`]); without one, a
    /// line per rule of the principal's roles ([`PolicyCheck::rules`]).
    /// Needs the `admin` or `audit` operation.
    pub async fn check_policy(
        &self,
        principal: &str,
        purpose: Option<&str>,
        collection: Option<&str>,
    ) -> Result<PolicyCheck> {
        let request = pb::CheckPolicyRequest {
            principal: principal.to_owned(),
            purpose: purpose.unwrap_or_default().to_owned(),
            collection: collection.unwrap_or_default().to_owned(),
        };
        let response = self
            .run(self.stubs.admin.clone(), request, |mut c, r| async move {
                c.check_policy(r).await
            })
            .await?;
        Ok(response.into())
    }

    /// Runs one `AuditService` call, as [`VaultClient::call`] does.
    async fn audit_call<Req, Resp, F, Fut>(&self, message: Req, rpc: F) -> Result<Resp>
    where
        F: FnOnce(AuditServiceClient<Authenticated>, Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<Response<Resp>, Status>>,
    {
        self.run(self.stubs.audit.clone(), message, rpc).await
    }

    /// Up to `limit` audit events from index `from` (the vault sends at
    /// most 1000 a call and no more than fit in a 4 MiB message, but at
    /// least one if there is one), each exactly the bytes of its Merkle
    /// leaf (a JSON object), and the log's size now. A page may stop short
    /// of `limit` and of the log's end: ask again from `from` plus the
    /// events received. An empty page: no event at `from` or after. The
    /// `audit_*` calls need the `audit` operation
    /// ([`Error::PermissionDenied`] otherwise) and an unsealed vault.
    ///
    /// Check what they return with [`crate::audit`]: [`crate::audit::verify_export`]
    /// for an exported log, [`crate::audit::verify_inclusion`] for a proof.
    pub async fn audit_events(&self, from: u64, limit: u32) -> Result<AuditPage> {
        let request = pb::AuditEventsRequest { from, limit };
        let response = self
            .audit_call(request, |mut c, r| async move { c.events(r).await })
            .await?;
        let most = limit.max(1) as usize;
        if response.events.len() > most {
            return Err(Error::Protocol(format!(
                "the vault sent {} audit events for a page of at most {most}",
                response.events.len()
            )));
        }
        Ok(AuditPage {
            events: response.events,
            tree_size: response.tree_size,
        })
    }

    /// Follows the audit log from index `from`: pages of events as they are
    /// appended, one request (one audit event) however long it runs. The
    /// client's timeout applies to opening the stream only.
    pub async fn audit_follow(&self, from: u64) -> Result<AuditFollow> {
        let mut stub = self.stubs.audit.clone();
        let request = Request::new(pb::AuditEventsRequest { from, limit: 0 });
        let response = tokio::time::timeout(self.timeout, stub.follow(request))
            .await
            .map_err(|_| Error::Timeout)??;
        Ok(AuditFollow {
            stream: response.into_inner(),
        })
    }

    /// Exports everything the vault holds of a data subject, for an access
    /// or portability request (the `export` operation, the `dpo` role, and
    /// an export rule on every collection holding a record of the
    /// subject): a JSON bundle (layout in `docs/subject-export.md`) of
    /// every record of the subject in every collection of the region and
    /// the subject's access ledger, streamed in chunks, then its detached
    /// signature by the vault's audit key. A refusal is this call's error.
    /// The client's timeout applies to opening the stream and to each
    /// message.
    pub async fn export_subject(&self, subject_id: &str) -> Result<SubjectExportStream> {
        let mut stub = self.stubs.subject.clone();
        // No gRPC deadline: a large export takes longer than one message.
        let request = Request::new(pb::ExportSubjectRequest {
            subject_id: subject_id.to_owned(),
        });
        let response = tokio::time::timeout(self.timeout, stub.export_subject(request))
            .await
            .map_err(|_| Error::Timeout)??;
        Ok(SubjectExportStream {
            stream: response.into_inner(),
            timeout: self.timeout,
            signed: false,
        })
    }

    /// Watches the monitor's alerts (auditor role): each alert raised from
    /// now on, until the vault seals or shuts down. The client's timeout
    /// applies to opening the stream only.
    pub async fn watch_alerts(&self) -> Result<AlertStream> {
        let mut stub = self.stubs.audit.clone();
        let request = Request::new(pb::WatchAlertsRequest {});
        let response = tokio::time::timeout(self.timeout, stub.watch(request))
            .await
            .map_err(|_| Error::Timeout)??;
        Ok(AlertStream {
            stream: response.into_inner(),
        })
    }

    /// The vault's signed checkpoints (C2SP signed notes) of tree size
    /// `from_size` or more, oldest first. The vault signs one of the log as
    /// it is now if the log grew since its last: unless `from_size` is
    /// beyond the log's size, the last note is the current checkpoint.
    /// Open them with [`crate::audit::Checkpoint::open`].
    ///
    /// The vault sends at most 1000 stored checkpoints at a time; this asks
    /// again until it has them all.
    pub async fn audit_checkpoints(&self, from_size: u64) -> Result<Vec<String>> {
        let mut all: Vec<String> = Vec::new();
        let mut from = from_size;
        loop {
            let request = pb::CheckpointsRequest { from_size: from };
            let mut response = self
                .audit_call(request, |mut c, r| async move { c.checkpoints(r).await })
                .await?;
            if !response.more {
                all.append(&mut response.checkpoints);
                return Ok(all);
            }
            // The page, then the current checkpoint: keep the page, ask
            // again after its last.
            response.checkpoints.pop();
            let last = response
                .checkpoints
                .last()
                .and_then(|note| crate::audit::Checkpoint::claimed_size(note.as_bytes()))
                .filter(|&size| size >= from)
                .ok_or_else(|| {
                    Error::Protocol(
                        "the vault said more checkpoints follow a page that states no size".into(),
                    )
                })?;
            all.append(&mut response.checkpoints);
            from = last.checked_add(1).ok_or_else(|| {
                Error::Protocol("a checkpoint states the largest tree size".into())
            })?;
        }
    }

    /// The inclusion proof of audit event `index` in the tree of the first
    /// `tree_size` events: the sibling hashes from the leaf up, for
    /// [`crate::audit::verify_inclusion`]. [`Error::InvalidInput`] if the
    /// index is not below the size or the log is smaller;
    /// [`Error::Protocol`] if a hash is not 32 bytes.
    pub async fn audit_inclusion_proof(&self, index: u64, tree_size: u64) -> Result<Vec<Hash>> {
        let request = pb::InclusionProofRequest { index, tree_size };
        let response = self
            .audit_call(
                request,
                |mut c, r| async move { c.inclusion_proof(r).await },
            )
            .await?;
        proof_hashes(response.hashes, "inclusion")
    }

    /// The consistency proof between the audit log's trees of `old_size`
    /// and `new_size` events, for [`crate::audit::verify_consistency`].
    /// [`Error::InvalidInput`] unless 1 ≤ `old_size` ≤ `new_size` ≤ the
    /// log's size; [`Error::Protocol`] if a hash is not 32 bytes.
    pub async fn audit_consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>> {
        let request = pb::ConsistencyProofRequest { old_size, new_size };
        let response = self
            .audit_call(
                request,
                |mut c, r| async move { c.consistency_proof(r).await },
            )
            .await?;
        proof_hashes(response.hashes, "consistency")
    }

    /// Hands the vault a witness's cosignature of one of its checkpoints
    /// (the checkpoint note with the witness's cosignature line; auditor
    /// role). The vault verifies it against the witnesses it is configured
    /// with and serves it with the checkpoint from then on. Returns the
    /// tree size and the witnesses whose cosignatures it took.
    pub async fn add_cosignature(&self, cosigned: &str) -> Result<(u64, Vec<String>)> {
        let request = pb::AddCosignatureRequest {
            checkpoint: cosigned.to_owned(),
        };
        let response = self
            .audit_call(
                request,
                |mut c, r| async move { c.add_cosignature(r).await },
            )
            .await?;
        Ok((response.tree_size, response.witnesses))
    }

    /// Tells the vault that witness `witness` refused a checkpoint
    /// (`refusal`, signed by it: `signature`); the vault raises a critical
    /// alert (auditor role).
    pub async fn report_refusal(
        &self,
        witness: &str,
        refusal: &crate::audit::Refusal,
        signature: &[u8],
    ) -> Result<()> {
        let request = pb::ReportRefusalRequest {
            witness: witness.to_owned(),
            time: refusal.timestamp,
            reason: refusal.reason.clone(),
            checkpoint: refusal.checkpoint.clone(),
            signature: signature.to_vec(),
        };
        self.audit_call(request, |mut c, r| async move { c.report_refusal(r).await })
            .await?;
        Ok(())
    }

    /// The C2SP verifier key of the vault's checkpoint signing key
    /// (`<origin>+<hex key id>+<base64 key>`, parsed by
    /// [`crate::audit::VerifierKey`]) and the log's origin, as
    /// `(verifier_key, origin)`. A key taken from the vault it is meant to
    /// check proves little: an auditor pins it, obtained once, out of band.
    /// [`Error::Protocol`] if the key does not parse.
    pub async fn audit_public_key(&self) -> Result<(String, String)> {
        let response = self
            .audit_call(pb::AuditPublicKeyRequest {}, |mut c, r| async move {
                c.public_key(r).await
            })
            .await?;
        check_verifier_key(&response.verifier_key)?;
        Ok((response.verifier_key, response.origin))
    }
}

/// One page of the audit log ([`VaultClient::audit_events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPage {
    /// The events, in log order from the index asked for: each is exactly
    /// the bytes of its Merkle leaf (a JSON object).
    pub events: Vec<Vec<u8>>,
    /// How many events the log held when the page was read.
    pub tree_size: u64,
}

/// A stream of audit events ([`VaultClient::audit_follow`]).
#[derive(Debug)]
pub struct AuditFollow {
    stream: tonic::Streaming<pb::AuditEventsResponse>,
}

impl AuditFollow {
    /// The next page of new events (at most 1000, and at most 4 MiB unless
    /// a single event is larger); `None` when the vault ended the stream
    /// (it shut down).
    pub async fn next(&mut self) -> Result<Option<AuditPage>> {
        match self.stream.message().await? {
            None => Ok(None),
            Some(page) if page.events.len() > 1000 => Err(Error::Protocol(format!(
                "the vault streamed {} audit events in one page (at most 1000)",
                page.events.len()
            ))),
            Some(page) => Ok(Some(AuditPage {
                events: page.events,
                tree_size: page.tree_size,
            })),
        }
    }
}

/// One alert of the vault's monitor ([`VaultClient::watch_alerts`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Alert {
    /// Its number since the vault started (1, 2, …).
    pub seq: u64,
    /// When it was raised (milliseconds since the Unix epoch).
    pub time_ms: u64,
    /// `warning` or `critical`.
    pub severity: String,
    /// `budget_exceeded`, `lockout`, …
    pub kind: String,
    /// The principal it concerns.
    pub principal: String,
    /// The purpose stated, if one.
    pub purpose: Option<String>,
    /// What happened (counts and limits).
    pub message: String,
    /// Alerts this stream skipped just before this one (it read too
    /// slowly); they are in the audit log.
    pub missed: u64,
}

/// A stream of alerts ([`VaultClient::watch_alerts`]).
#[derive(Debug)]
pub struct AlertStream {
    stream: tonic::Streaming<pb::Alert>,
}

impl AlertStream {
    /// The next alert; `None` when the vault ended the stream (it shut
    /// down). A seal ends it with [`Error::Unavailable`].
    pub async fn next(&mut self) -> Result<Option<Alert>> {
        Ok(self.stream.message().await?.map(|a| Alert {
            seq: a.seq,
            time_ms: a.time_ms,
            severity: a.severity,
            kind: a.kind,
            principal: a.principal,
            purpose: a.purpose,
            message: a.message,
            missed: a.missed,
        }))
    }
}

/// One piece of a subject export ([`SubjectExportStream::next`]).
#[derive(Debug)]
pub enum ExportPart {
    /// The next bytes of the bundle, in order (wiped when dropped).
    Chunk {
        /// The bytes.
        bytes: zeroize::Zeroizing<Vec<u8>>,
        /// Records written so far.
        records_done: u64,
        /// Records listed when the export began (an upper bound).
        records_total: u64,
    },
    /// The bundle's detached signature (a signed note; check it with
    /// [`crate::export::verify_export`]). Always the last part.
    Signature(String),
}

/// A subject export as the vault streams it
/// ([`VaultClient::export_subject`]).
#[derive(Debug)]
pub struct SubjectExportStream {
    stream: tonic::Streaming<pb::ExportSubjectResponse>,
    timeout: Duration,
    signed: bool,
}

impl SubjectExportStream {
    /// The next part: chunks of the bundle in order, then its signature,
    /// then `None`. A stream that ends without a signature is an error
    /// (the export did not finish). The client's timeout applies to each
    /// message.
    pub async fn next(&mut self) -> Result<Option<ExportPart>> {
        let message = tokio::time::timeout(self.timeout, self.stream.message())
            .await
            .map_err(|_| Error::Timeout)??;
        let Some(m) = message else {
            return if self.signed {
                Ok(None)
            } else {
                Err(Error::Protocol(
                    "the export ended without its signature: it did not finish".into(),
                ))
            };
        };
        if self.signed {
            return Err(Error::Protocol(
                "the vault sent more after the export's signature".into(),
            ));
        }
        if m.signature.is_empty() {
            return Ok(Some(ExportPart::Chunk {
                bytes: zeroize::Zeroizing::new(m.chunk),
                records_done: m.records_done,
                records_total: m.records_total,
            }));
        }
        if !m.chunk.is_empty() {
            return Err(Error::Protocol(
                "the vault sent bundle bytes with the export's signature".into(),
            ));
        }
        self.signed = true;
        Ok(Some(ExportPart::Signature(m.signature)))
    }

    /// Reads the whole export into memory: the bundle and its signature.
    pub async fn read_all(mut self) -> Result<(zeroize::Zeroizing<Vec<u8>>, String)> {
        let mut bundle = zeroize::Zeroizing::new(Vec::new());
        let mut signature = None;
        while let Some(part) = self.next().await? {
            match part {
                ExportPart::Chunk { bytes, .. } => {
                    // Reserved ahead so that growing leaves no copy behind.
                    if bundle.capacity() - bundle.len() < bytes.len() {
                        let mut bigger = zeroize::Zeroizing::new(Vec::with_capacity(
                            (bundle.len() + bytes.len()).max(2 * bundle.capacity()),
                        ));
                        bigger.extend_from_slice(&bundle);
                        bundle = bigger;
                    }
                    bundle.extend_from_slice(&bytes);
                }
                ExportPart::Signature(s) => signature = Some(s),
            }
        }
        let signature = signature.ok_or_else(|| {
            Error::Protocol("the export ended without its signature: it did not finish".into())
        })?;
        Ok((bundle, signature))
    }
}

/// The most hashes a proof may hold: a tree of at most 2^64 leaves has 64
/// levels, and a consistency proof needs at most twice that.
const MAX_PROOF_HASHES: usize = 128;

/// The hashes of a proof from the vault, each of 32 bytes.
fn proof_hashes(hashes: Vec<Vec<u8>>, kind: &str) -> Result<Vec<Hash>> {
    if hashes.len() > MAX_PROOF_HASHES {
        return Err(Error::Protocol(format!(
            "the {kind} proof has {} hashes (at most {MAX_PROOF_HASHES} make sense)",
            hashes.len()
        )));
    }
    hashes
        .into_iter()
        .enumerate()
        .map(|(i, hash)| {
            let len = hash.len();
            Hash::try_from(hash).map_err(|_| {
                Error::Protocol(format!(
                    "hash {i} of the {kind} proof is {len} bytes, not 32"
                ))
            })
        })
        .collect()
}

/// Refuses a verifier key from the vault that does not parse.
fn check_verifier_key(text: &str) -> Result<()> {
    text.parse::<VerifierKey>().map(drop).map_err(|e| {
        Error::Protocol(format!(
            "the vault's audit verifier key does not parse: {e}"
        ))
    })
}

fn to_strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn missing(what: &str) -> Error {
    Error::Protocol(format!("the answer lacks {what}"))
}

/// A record read with masked or redacted fields holds less than the vault
/// does: writing it back would store the masks and drop the hidden fields.
fn refuse_partial(record: &Record) -> Result<()> {
    if record.masked.is_empty() && record.redacted.is_empty() {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "a record of collection {} was read with masked or redacted fields; writing it \
         back would overwrite the stored values with what the policy showed",
        record.collection
    )))
}

/// Shares are printed and written to files as they come: nothing but
/// printable text is taken, and shares come in clear only when no
/// recipients were named (else only age files, one per recipient).
fn check_issued(clear: &[String], sealed: &[String], recipients: &[String]) -> Result<()> {
    if !clear
        .iter()
        .all(|s| s.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(Error::Protocol(
            "the vault sent an unseal share that is not printable text".into(),
        ));
    }
    if !sealed.iter().all(|s| {
        s.starts_with(crate::sealed_share::AGE_ARMOR_BEGIN)
            && s.bytes()
                .all(|b| b.is_ascii_graphic() || b == b'\n' || b == b'\r' || b == b' ')
    }) {
        return Err(Error::Protocol(
            "the vault sent an encrypted share that is not an ASCII-armored age file".into(),
        ));
    }
    if !recipients.is_empty() && (!clear.is_empty() || sealed.len() != recipients.len()) {
        return Err(Error::Protocol(format!(
            "{} recipients were named, but the vault sent {} encrypted and {} clear shares",
            recipients.len(),
            sealed.len(),
            clear.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_hashes_must_be_32_bytes() {
        let good = vec![vec![1u8; 32], vec![2u8; 32]];
        assert_eq!(
            proof_hashes(good, "inclusion").unwrap(),
            vec![[1u8; 32], [2u8; 32]]
        );
        assert_eq!(
            proof_hashes(Vec::new(), "inclusion").unwrap(),
            Vec::<Hash>::new()
        );
        for bad in [vec![0u8; 31], vec![0u8; 33], Vec::new()] {
            let len = bad.len();
            let hashes = vec![vec![0u8; 32], bad];
            assert!(
                matches!(
                    proof_hashes(hashes, "consistency"),
                    Err(Error::Protocol(m))
                        if m == format!("hash 1 of the consistency proof is {len} bytes, not 32")
                ),
                "{len}"
            );
        }
        let too_many = vec![vec![0u8; 32]; MAX_PROOF_HASHES + 1];
        assert!(matches!(
            proof_hashes(too_many, "inclusion"),
            Err(Error::Protocol(m)) if m.contains("129 hashes")
        ));
        assert_eq!(
            proof_hashes(vec![vec![0u8; 32]; MAX_PROOF_HASHES], "x")
                .unwrap()
                .len(),
            MAX_PROOF_HASHES
        );
    }

    #[test]
    fn the_vaults_verifier_key_must_parse() {
        let public = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        let key = crate::audit::VerifierKey::new("vault/eu/01ab", public.as_bytes()).unwrap();
        assert!(check_verifier_key(&key.to_string()).is_ok());
        for bad in ["", "vault/eu+00000000+AQ==", "not a key"] {
            assert!(
                matches!(check_verifier_key(bad), Err(Error::Protocol(m)) if m.contains("does not parse")),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn audit_calls_map_an_unreachable_vault_to_an_error() {
        let client = VaultClient::builder("127.0.0.1:1")
            .token("t")
            .timeout(Duration::from_secs(2))
            .connect_lazy()
            .unwrap();
        assert!(matches!(
            client.audit_events(0, 10).await,
            Err(Error::Connect(_) | Error::Unavailable(_) | Error::Timeout)
        ));
    }

    #[test]
    fn addresses_get_a_scheme() {
        assert_eq!(
            with_scheme("127.0.0.1:8200", "http"),
            "http://127.0.0.1:8200"
        );
        assert_eq!(
            with_scheme("vault.eu:8200", "https"),
            "https://vault.eu:8200"
        );
        assert_eq!(with_scheme(" http://h:1 ", "https"), "http://h:1");
        assert_eq!(
            with_scheme("https://vault.eu:443", "http"),
            "https://vault.eu:443"
        );
    }

    #[test]
    fn credentials_are_added_and_hidden() {
        let mut credentials = Credentials::new("s3cret-token", Some("billing")).unwrap();
        let request = credentials.call(Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer s3cret-token"
        );
        assert_eq!(
            request.metadata().get(PURPOSE_METADATA_KEY).unwrap(),
            "billing"
        );
        assert!(!format!("{credentials:?}").contains("s3cret"));

        let mut without = Credentials::new("t", None).unwrap();
        let request = without.call(Request::new(())).unwrap();
        assert!(request.metadata().get(PURPOSE_METADATA_KEY).is_none());
    }

    #[test]
    fn bad_credentials_are_refused() {
        assert!(matches!(
            Credentials::new("", None),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            Credentials::new("a\nb", None),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            Credentials::new("t", Some("caf\u{e9}")),
            Err(Error::InvalidInput(_))
        ));
    }

    #[tokio::test]
    async fn builder_checks_its_inputs() {
        assert!(matches!(
            VaultClient::builder("127.0.0.1:1").connect_lazy(),
            Err(Error::InvalidInput(m)) if m.contains("token")
        ));
        assert!(matches!(
            VaultClient::builder("http://bad host:1").token("t").connect_lazy(),
            Err(Error::InvalidInput(m)) if m.contains("address")
        ));
        let client = VaultClient::builder("127.0.0.1:1")
            .token("s3cret-token")
            .purpose("billing")
            .timeout(Duration::from_secs(3))
            .connect_lazy()
            .unwrap();
        assert_eq!(client.addr(), "http://127.0.0.1:1");
        assert_eq!(client.purpose(), Some("billing"));
        assert_eq!(client.timeout(), Duration::from_secs(3));
        let debug = format!("{client:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        let builder = VaultClient::builder("x").token("s3cret-token");
        assert!(!format!("{builder:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn a_builder_is_a_template_for_other_addresses() {
        let template = VaultClient::builder("127.0.0.1:1")
            .token("t")
            .purpose("billing")
            .timeout(Duration::from_secs(3));
        let other = template
            .clone()
            .address("127.0.0.1:2")
            .connect_lazy()
            .unwrap();
        assert_eq!(other.addr(), "http://127.0.0.1:2");
        assert_eq!(other.purpose(), Some("billing"));
        assert_eq!(other.timeout(), Duration::from_secs(3));
        let first = template.connect_lazy().unwrap();
        assert_eq!(first.addr(), "http://127.0.0.1:1");
    }

    fn invalid(builder: ClientBuilder) -> String {
        match builder.connect_lazy() {
            Err(Error::InvalidInput(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn tls_options_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not pem at all").unwrap();
        let missing = dir.path().join("missing.pem");

        let m = invalid(VaultClient::builder("vault.eu:8200").ca_certificate_file(&missing));
        assert!(m.contains("no token"), "{m}");
        let m = invalid(
            VaultClient::builder("vault.eu:8200")
                .token("t")
                .ca_certificate_file(&missing),
        );
        assert!(
            m.starts_with("cannot read the CA certificate file") && m.contains("missing.pem"),
            "{m}"
        );
        let m = invalid(
            VaultClient::builder("https://vault.eu:8200")
                .token("t")
                .ca_certificate_file(&garbage),
        );
        assert!(m.contains("garbage.pem holds no PEM certificate"), "{m}");
        let m = invalid(
            VaultClient::builder("https://vault.eu:8200")
                .token("t")
                .ca_certificate_pem(
                    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                ),
        );
        assert!(m.contains("not a usable CA certificate"), "{m}");
        let m = invalid(
            VaultClient::builder("https://vault.eu:8200").client_identity_files(&garbage, &missing),
        );
        assert!(
            m.contains("client certificate file") && m.contains("garbage.pem"),
            "{m}"
        );
        let m = invalid(
            VaultClient::builder("http://vault.eu:8200")
                .token("t")
                .ca_certificate_file(&garbage),
        );
        assert!(m.contains("needs an https:// address"), "{m}");

        // No CA: the system's roots; a bare address gets https:// with a
        // TLS option.
        let client = VaultClient::builder("127.0.0.1:1")
            .token("t")
            .tls_server_name("vault.eu")
            .connect_lazy();
        if let Ok(client) = client {
            assert_eq!(client.addr(), "https://127.0.0.1:1");
        }
        let builder = VaultClient::builder("x").client_identity_pem("CERT", "s3cret-key");
        assert!(!format!("{builder:?}").contains("s3cret"));
    }
}
