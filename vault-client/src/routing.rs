//! Region routing: one vault per region, several servers per region.
//!
//! A deployment runs one vault per region; a region may run several
//! stateless vault servers over the same database. A [`RegionMap`] lists,
//! for each region, the addresses of its servers in order of preference.
//! A [`RegionalClient`] built from the map and a template
//! [`ClientBuilder`] holds one lazily connected [`VaultClient`] per
//! endpoint; [`RegionalClient::region`] gives a [`RegionHandle`] whose calls
//! go to that region's servers only, with failover between them.
//!
//! # Failover
//!
//! A call goes first to the region's current endpoint (at the start, the
//! first one listed). If that endpoint is not serving, the call is sent to
//! the next one of the same region, and so on; the endpoint that answered
//! becomes the current one for later calls (sticky), so a dead endpoint is
//! not tried first again until the one that answered fails in its turn.
//! "Not serving" is:
//!
//! - [`Error::Connect`]: the endpoint could not be reached (connection
//!   refused, DNS, TLS handshake) or the connection broke;
//! - [`Error::Unavailable`]: the server answered UNAVAILABLE, which is what
//!   a sealed vault ([`Error::is_sealed`]) and one shutting down say.
//!
//! Every other error is an answer and is returned at once, from the
//! endpoint that gave it, without trying another: NOT_FOUND,
//! PERMISSION_DENIED, UNAUTHENTICATED, INVALID_ARGUMENT, DATA_LOSS
//! ([`Error::Integrity`]), over budget, and so on. Servers of one region
//! share their database and policy, so another would answer the same.
//!
//! [`Error::Timeout`] also ends the call without a failover: the endpoint
//! may still be working on the request (a write may yet be applied) and
//! the deadline is the caller's budget for the call, which a resend to the
//! next endpoint would double. The caller may retry; the current endpoint
//! stays as it was.
//!
//! When every endpoint of the region failed so, the call fails with
//! [`Error::AllEndpointsFailed`], which names the region and the endpoints
//! tried and carries the last endpoint's error. A call never goes to an
//! endpoint of another region: a handle knows only its own region's
//! endpoints, and a map may not list one address under two regions.
//!
//! # Writes and failover
//!
//! A connection that broke after the request was sent is an
//! [`Error::Connect`] as well, and the server may have applied the write
//! before it broke. The write is then sent to the next endpoint anyway.
//! That is safe for the writes a [`RegionHandle`] offers because each is
//! idempotent over the region's one database:
//!
//! - [`RegionHandle::put`] and [`RegionHandle::put_many`] replace whole
//!   records: applying the same put twice leaves what applying it once
//!   does (the last write wins);
//! - [`RegionHandle::delete`] of a deleted record changes nothing, but its
//!   answer may then be `false` even though this very call deleted the
//!   record, through the endpoint whose connection broke.
//!
//! As with any retry, a write that the first endpoint applies late could
//! land after another client's later write of the same record; that is the
//! same race as a caller's own retry after an error, not one made by
//! routing. Calls with effects that are not idempotent (custody, erasure,
//! collection creation) are not offered by the handle: make them on one
//! endpoint's client ([`RegionHandle::current_client`]).
//!
//! ```no_run
//! # async fn demo() -> vault_client::Result<()> {
//! use vault_client::{RegionMap, RegionalClient, Record, VaultClient};
//!
//! let map: RegionMap = "eu=https://eu-1:8200,https://eu-2:8200; us=https://us-1:8200".parse()?;
//! let template = VaultClient::builder("").token("dev-token").purpose("support-ticket");
//! let client = RegionalClient::new(&map, &template)?;
//! let eu = client.region("eu")?;
//! eu.put(&Record::new("users", "u1", "subject-1").with("email", "a@b.eu")).await?;
//! println!("served by {}", eu.current_endpoint());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::Ipv6Addr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::client::{ClientBuilder, VaultClient};
use crate::custody::SealStatus;
use crate::error::{Error, Result};
use crate::types::{BatchGet, Record, Value};

/// Why a [`RegionMap`] was refused: its text does not parse, or a region
/// or endpoint breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegionMapError {
    /// The text lists no region.
    #[error("the region map lists no region")]
    NoRegions,
    /// An entry of the text is empty (two `;` in a row, or a leading `;`).
    #[error("entry {entry} of the region map is empty")]
    EmptyEntry {
        /// The entry's position, from 1.
        entry: usize,
    },
    /// An entry of the text lacks the `=` between region and endpoints.
    #[error("entry {entry} of the region map (`{text}`) is not `region=address,...`")]
    MissingEquals {
        /// The entry's position, from 1.
        entry: usize,
        /// The entry.
        text: String,
    },
    /// A region with an empty name.
    #[error("a region name is empty")]
    EmptyRegion,
    /// A region name that breaks the rules (see [`RegionMap`]).
    #[error(
        "invalid region name `{0}` (2 to 16 characters of a-z, 0-9, '-', starting with a letter)"
    )]
    BadRegion(String),
    /// A region listed twice.
    #[error("region {0} is listed twice")]
    DuplicateRegion(String),
    /// A region without endpoints.
    #[error("region {0} has no endpoint")]
    NoEndpoints(String),
    /// An empty endpoint address (two `,` in a row, say).
    #[error("region {0} has an empty endpoint address")]
    EmptyEndpoint(String),
    /// A malformed endpoint address.
    #[error(
        "endpoint `{address}` of region {region} is not [http://|https://]host:port: {reason}"
    )]
    BadAddress {
        /// The region.
        region: String,
        /// The address.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// One server (`host:port`) listed twice, in one region or two: a
    /// request for one region must never reach another region's server.
    #[error("endpoint `{address}` of region {region} is listed already, under region {first}")]
    DuplicateEndpoint {
        /// The region where it is listed again.
        region: String,
        /// The address.
        address: String,
        /// The region where it was first listed.
        first: String,
    },
}

/// A refused map as the client's [`Error::InvalidInput`].
impl From<RegionMapError> for Error {
    fn from(error: RegionMapError) -> Self {
        Error::InvalidInput(error.to_string())
    }
}

/// The endpoints of each region: region name → the addresses of its vault
/// servers, in order of preference.
///
/// A region name is 2 to 16 characters of `a-z`, `0-9` and `-`, starting
/// with a letter (as the vault's own region names). An address is
/// `host:port`, `http://host:port` or `https://host:port`, where the host
/// is a DNS name, an IPv4 address or a bracketed IPv6 address (`[::1]`),
/// and the port is required; there is no path. A bare `host:port` gets its
/// scheme from the template builder (`https://` when it has a TLS option).
/// Every region has at least one endpoint, and no server (`host:port`) is
/// listed twice, in one region or across two.
///
/// # Text form
///
/// `region=address,address;region=address`, for a command-line flag or an
/// environment variable: entries separated by `;` (one trailing `;` is
/// allowed), the region and its addresses by `=`, addresses by `,`;
/// spaces, tabs and line breaks around each part are ignored. For example
/// `eu=https://eu-1:8200,https://eu-2:8200;us=https://us-1:8200`.
/// [`fmt::Display`] writes this form back (regions in order of name), and
/// parsing it gives the same map.
///
/// ```
/// use vault_client::RegionMap;
///
/// let parsed: RegionMap = "eu = https://eu-1:8200, https://eu-2:8200; us = https://us-1:8200"
///     .parse()
///     .unwrap();
/// let built = RegionMap::new()
///     .with_region("us", ["https://us-1:8200"])
///     .unwrap()
///     .with_region("eu", ["https://eu-1:8200", "https://eu-2:8200"])
///     .unwrap();
/// assert_eq!(parsed, built);
/// assert_eq!(parsed.endpoints("eu").unwrap()[1], "https://eu-2:8200");
/// assert!("eu=".parse::<RegionMap>().is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionMap {
    regions: BTreeMap<String, Vec<String>>,
}

impl RegionMap {
    /// An empty map; add regions with [`RegionMap::add_region`] or
    /// [`RegionMap::with_region`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `region` with its endpoint addresses, in order of preference
    /// (each trimmed of surrounding white space). Refuses a bad region
    /// name, a region already listed, no endpoints, an empty or malformed
    /// address, and a server already listed (in this region or another);
    /// the map is left unchanged then.
    pub fn add_region<I, S>(
        &mut self,
        region: &str,
        endpoints: I,
    ) -> std::result::Result<(), RegionMapError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let region = region.trim();
        check_region(region)?;
        if self.regions.contains_key(region) {
            return Err(RegionMapError::DuplicateRegion(region.to_owned()));
        }
        let mut servers: Vec<(String, String)> = Vec::new();
        let mut addresses = Vec::new();
        for address in endpoints {
            let address = address.as_ref().trim();
            if address.is_empty() {
                return Err(RegionMapError::EmptyEndpoint(region.to_owned()));
            }
            let server = server_of(address).map_err(|reason| RegionMapError::BadAddress {
                region: region.to_owned(),
                address: address.to_owned(),
                reason,
            })?;
            let first = if servers.iter().any(|(s, _)| *s == server) {
                Some(region.to_owned())
            } else {
                self.region_of_server(&server)
            };
            if let Some(first) = first {
                return Err(RegionMapError::DuplicateEndpoint {
                    region: region.to_owned(),
                    address: address.to_owned(),
                    first,
                });
            }
            servers.push((server, address.to_owned()));
            addresses.push(address.to_owned());
        }
        if addresses.is_empty() {
            return Err(RegionMapError::NoEndpoints(region.to_owned()));
        }
        self.regions.insert(region.to_owned(), addresses);
        Ok(())
    }

    /// [`RegionMap::add_region`], by value, for chaining.
    pub fn with_region<I, S>(
        mut self,
        region: &str,
        endpoints: I,
    ) -> std::result::Result<Self, RegionMapError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.add_region(region, endpoints)?;
        Ok(self)
    }

    /// The region that lists `server` (`host:port`, lower-case), if any.
    fn region_of_server(&self, server: &str) -> Option<String> {
        self.regions.iter().find_map(|(region, addresses)| {
            addresses
                .iter()
                .any(|a| server_of(a).is_ok_and(|s| s == server))
                .then(|| region.clone())
        })
    }

    /// The regions, in order of name.
    pub fn regions(&self) -> impl Iterator<Item = &str> + '_ {
        self.regions.keys().map(String::as_str)
    }

    /// The endpoint addresses of `region`, in order of preference; `None`
    /// for a region the map does not list.
    pub fn endpoints(&self, region: &str) -> Option<&[String]> {
        self.regions.get(region).map(Vec::as_slice)
    }

    /// How many regions the map lists.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether the map lists no region.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }
}

/// Parses the text form (see [`RegionMap`]).
impl FromStr for RegionMap {
    type Err = RegionMapError;

    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        let mut map = RegionMap::new();
        let mut entries: Vec<&str> = text.split(';').collect();
        // One trailing `;` is allowed.
        if entries.len() > 1 && entries.last().is_some_and(|e| e.trim().is_empty()) {
            entries.pop();
        }
        if entries.len() == 1 && entries[0].trim().is_empty() {
            return Err(RegionMapError::NoRegions);
        }
        for (i, entry) in entries.iter().enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                return Err(RegionMapError::EmptyEntry { entry: i + 1 });
            }
            let Some((region, endpoints)) = entry.split_once('=') else {
                return Err(RegionMapError::MissingEquals {
                    entry: i + 1,
                    text: entry.to_owned(),
                });
            };
            let region = region.trim();
            check_region(region)?;
            if endpoints.trim().is_empty() {
                return Err(RegionMapError::NoEndpoints(region.to_owned()));
            }
            map.add_region(region, endpoints.split(','))?;
        }
        Ok(map)
    }
}

/// The text form (see [`RegionMap`]), regions in order of name.
impl fmt::Display for RegionMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (region, addresses)) in self.regions.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{region}={}", addresses.join(","))?;
        }
        Ok(())
    }
}

/// Checks a region name: 2 to 16 characters of `[a-z0-9-]`, starting with
/// a letter.
fn check_region(region: &str) -> std::result::Result<(), RegionMapError> {
    if region.is_empty() {
        return Err(RegionMapError::EmptyRegion);
    }
    let ok = (2..=16).contains(&region.len())
        && region.starts_with(|c: char| c.is_ascii_lowercase())
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(RegionMapError::BadRegion(region.to_owned()))
    }
}

/// The server an address names, `host:port` in lower case (the scheme left
/// out: `http://` and `https://` of one host and port reach one server), or
/// why the address is malformed.
fn server_of(address: &str) -> std::result::Result<String, String> {
    let rest = match address.split_once("://") {
        Some(("http" | "https", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "the scheme `{scheme}` is neither http:// nor https://"
            ))
        }
        None => address,
    };
    if let Some(c) = rest
        .chars()
        .find(|&c| matches!(c, '/' | '?' | '#' | '@') || c.is_whitespace() || c.is_control())
    {
        return Err(match c {
            '/' | '?' | '#' => "an address has no path or query".to_owned(),
            '@' => "an address has no user name".to_owned(),
            _ => "an address has no spaces or control characters".to_owned(),
        });
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let Some((ip, after)) = bracketed.split_once(']') else {
            return Err("an IPv6 address lacks its closing `]`".to_owned());
        };
        if ip.parse::<Ipv6Addr>().is_err() {
            return Err(format!("`{ip}` is not an IPv6 address"));
        }
        let Some(port) = after.strip_prefix(':') else {
            return Err("the port is missing (`[ipv6]:port`)".to_owned());
        };
        (&rest[..ip.len() + 2], port)
    } else {
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err("the port is missing (`host:port`)".to_owned());
        };
        if host.contains(':') {
            return Err("an IPv6 address goes in brackets (`[::1]:8200`)".to_owned());
        }
        if host.is_empty() {
            return Err("the host is empty".to_owned());
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(format!(
                "the host `{host}` may only have letters, digits, '.', '-' and '_'"
            ));
        }
        if host.starts_with(['.', '-']) || host.ends_with('-') || host.contains("..") {
            return Err(format!("`{host}` is not a host name"));
        }
        (host, port)
    };
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("the port `{port}` is not a number from 1 to 65535"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("the port `{port}` is not a number from 1 to 65535")),
        Ok(_) => Ok(format!("{}:{port}", host.to_ascii_lowercase())),
    }
}

/// The endpoints of one region and which of them is current.
struct RegionState {
    name: String,
    /// One lazily connected client per endpoint, in order of preference.
    endpoints: Vec<VaultClient>,
    /// The index of the endpoint tried first: the last one that answered.
    current: AtomicUsize,
}

impl fmt::Debug for RegionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("name", &self.name)
            .field(
                "endpoints",
                &self
                    .endpoints
                    .iter()
                    .map(VaultClient::addr)
                    .collect::<Vec<_>>(),
            )
            .field("current", &self.current.load(Ordering::Relaxed))
            .finish()
    }
}

/// A client of every region of a [`RegionMap`]: one lazily connected
/// [`VaultClient`] per endpoint, made from a template [`ClientBuilder`].
///
/// [`RegionalClient::region`] gives the [`RegionHandle`] through which a
/// region's calls go, with failover between that region's endpoints only
/// (see the [module](crate::routing) documentation). Cloning is cheap;
/// clones share the connections and each region's current endpoint.
/// `Debug` never shows the token.
#[derive(Debug, Clone)]
pub struct RegionalClient {
    regions: Arc<BTreeMap<String, Arc<RegionState>>>,
}

impl RegionalClient {
    /// A client of every endpoint of `map`, each made from `template` (its
    /// token, purpose, deadlines and TLS options; its own address is not
    /// used). Nothing is connected yet: each endpoint connects on its first
    /// call. Needs a Tokio runtime.
    ///
    /// [`Error::InvalidInput`] for what the template's
    /// [`ClientBuilder::connect_lazy`] refuses (no token, a token or
    /// purpose that cannot be sent, an unreadable certificate), naming the
    /// endpoint. A TLS server name set in the template
    /// ([`ClientBuilder::tls_server_name`]) applies to every endpoint.
    pub fn new(map: &RegionMap, template: &ClientBuilder) -> Result<Self> {
        let mut regions = BTreeMap::new();
        for (name, addresses) in &map.regions {
            let endpoints = addresses
                .iter()
                .map(|address| {
                    template
                        .clone()
                        .address(address.clone())
                        .connect_lazy()
                        .map_err(|e| match e {
                            Error::InvalidInput(m) => Error::InvalidInput(format!(
                                "endpoint {address} of region {name}: {m}"
                            )),
                            other => other,
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            regions.insert(
                name.clone(),
                Arc::new(RegionState {
                    name: name.clone(),
                    endpoints,
                    current: AtomicUsize::new(0),
                }),
            );
        }
        Ok(Self {
            regions: Arc::new(regions),
        })
    }

    /// The handle of `region`, whose calls go to that region's endpoints
    /// only. [`Error::UnknownRegion`] (naming the regions the map lists)
    /// for a region the map does not list; no request is sent.
    pub fn region(&self, region: &str) -> Result<RegionHandle> {
        match self.regions.get(region) {
            Some(state) => Ok(RegionHandle {
                state: Arc::clone(state),
            }),
            None => Err(Error::UnknownRegion {
                region: region.to_owned(),
                known: self.regions.keys().cloned().collect(),
            }),
        }
    }

    /// The regions, in order of name.
    pub fn regions(&self) -> impl Iterator<Item = &str> + '_ {
        self.regions.keys().map(String::as_str)
    }
}

/// The calls of one region, sent to its current endpoint with failover to
/// its other endpoints (see the [module](crate::routing) documentation).
///
/// Made by [`RegionalClient::region`]. Cloning is cheap; clones (and other
/// handles of the same region from the same client) share the region's
/// current endpoint.
#[derive(Debug, Clone)]
pub struct RegionHandle {
    state: Arc<RegionState>,
}

/// Whether an error means the endpoint is not serving, so that the call
/// goes to the next endpoint: unreachable or a broken connection
/// ([`Error::Connect`]), or UNAVAILABLE (sealed, shutting down).
fn endpoint_not_serving(error: &Error) -> bool {
    matches!(error, Error::Connect(_) | Error::Unavailable(_))
}

impl RegionHandle {
    /// The region's name.
    pub fn region(&self) -> &str {
        &self.state.name
    }

    /// The region's endpoints (with their scheme), in order of preference.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> + '_ {
        self.state.endpoints.iter().map(VaultClient::addr)
    }

    /// The endpoint (with its scheme, as [`VaultClient::addr`]) that the
    /// next call goes to first: the one that answered the last call, or
    /// the first one listed before any call answered.
    pub fn current_endpoint(&self) -> &str {
        self.current_client().addr()
    }

    /// The client of the current endpoint, for the calls the handle does not
    /// offer (custody, audit, collections). Its calls have no failover.
    pub fn current_client(&self) -> &VaultClient {
        let state = &*self.state;
        // `current` is always an index of `endpoints`, which is never
        // empty: a region map has no region without endpoints.
        let at = state.current.load(Ordering::Relaxed);
        &state.endpoints[at]
    }

    /// Runs `call` on the current endpoint, then on the next ones while
    /// they are not serving; remembers the endpoint that answered.
    async fn route<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut(VaultClient) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let state = &*self.state;
        let count = state.endpoints.len();
        if count == 0 {
            return Err(Error::InvalidInput(format!(
                "region {} has no endpoint",
                state.name
            )));
        }
        let start = state.current.load(Ordering::Relaxed) % count;
        let mut tried = Vec::new();
        let mut last = None;
        for step in 0..count {
            let at = (start + step) % count;
            let endpoint = &state.endpoints[at];
            match call(endpoint.clone()).await {
                Err(error) if endpoint_not_serving(&error) => {
                    tried.push(endpoint.addr().to_owned());
                    last = Some(error);
                }
                // The endpoint may still be working on the request: not
                // resent, and not known to be serving.
                Err(Error::Timeout) => return Err(Error::Timeout),
                // A result or an answer: this endpoint serves.
                result => {
                    state.current.store(at, Ordering::Relaxed);
                    return result;
                }
            }
        }
        Err(Error::AllEndpointsFailed {
            region: state.name.clone(),
            tried,
            last: Box::new(last.unwrap_or_else(|| {
                Error::InvalidInput(format!("region {} has no endpoint", state.name))
            })),
        })
    }

    /// [`VaultClient::put`] in this region: creates or replaces a record.
    /// Resent to the next endpoint after a broken connection, which is safe
    /// because a put is idempotent (see the module documentation).
    pub async fn put(&self, record: &Record) -> Result<()> {
        self.route(move |c| async move { c.put(record).await })
            .await
    }

    /// [`VaultClient::get`] in this region: reads a whole record;
    /// [`Error::NotFound`] if there is none.
    pub async fn get(&self, collection: &str, id: &str) -> Result<Record> {
        self.route(move |c| async move { c.get(collection, id).await })
            .await
    }

    /// [`VaultClient::get_fields`] in this region: reads the named fields
    /// of a record (all if `fields` is empty).
    pub async fn get_fields(&self, collection: &str, id: &str, fields: &[&str]) -> Result<Record> {
        self.route(move |c| async move { c.get_fields(collection, id, fields).await })
            .await
    }

    /// [`VaultClient::delete`] in this region: deletes a record; returns
    /// whether there was one. After a failover that followed a broken
    /// connection, `false` may mean that this call deleted the record
    /// through the endpoint whose connection broke (see the module
    /// documentation).
    pub async fn delete(&self, collection: &str, id: &str) -> Result<bool> {
        self.route(move |c| async move { c.delete(collection, id).await })
            .await
    }

    /// [`VaultClient::put_many`] in this region: creates or replaces
    /// several records atomically; returns how many were written. Resent
    /// to the next endpoint after a broken connection, as
    /// [`RegionHandle::put`].
    pub async fn put_many(&self, records: &[Record]) -> Result<u32> {
        self.route(move |c| async move { c.put_many(records).await })
            .await
    }

    /// [`VaultClient::get_many`] in this region: reads several records of
    /// one collection.
    pub async fn get_many(
        &self,
        collection: &str,
        ids: &[&str],
        fields: &[&str],
    ) -> Result<BatchGet> {
        self.route(move |c| async move { c.get_many(collection, ids, fields).await })
            .await
    }

    /// [`VaultClient::find`] in this region: the records whose indexed
    /// `field` equals `value`.
    pub async fn find(
        &self,
        collection: &str,
        field: &str,
        value: impl Into<Value>,
        fields: &[&str],
        limit: u32,
    ) -> Result<Vec<Record>> {
        let value: Value = value.into();
        self.route(move |c| {
            let value = value.clone();
            async move { c.find(collection, field, value, fields, limit).await }
        })
        .await
    }

    /// [`VaultClient::status`] of the region's current endpoint (custody
    /// role). A sealed vault answers this call (it says it is sealed), so
    /// it does not fail over from a sealed endpoint.
    pub async fn status(&self) -> Result<SealStatus> {
        self.route(|c| async move { c.status().await }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<RegionMap, RegionMapError> {
        text.parse()
    }

    #[test]
    fn the_text_form_parses() {
        let map = parse("eu=https://eu-1:8200,https://eu-2:8200;us=us-1.example.com:8200").unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map.regions().collect::<Vec<_>>(), ["eu", "us"]);
        assert_eq!(
            map.endpoints("eu").unwrap(),
            ["https://eu-1:8200", "https://eu-2:8200"]
        );
        assert_eq!(map.endpoints("us").unwrap(), ["us-1.example.com:8200"]);
        assert_eq!(map.endpoints("ap"), None);

        // White space around parts, a trailing `;`, IPv4 and IPv6.
        let spaced = parse(
            " eu = http://127.0.0.1:1 ,\n [::1]:2 ;\tus-east-1=https://[2001:db8::1]:8200 ; ",
        )
        .unwrap();
        assert_eq!(
            spaced.endpoints("eu").unwrap(),
            ["http://127.0.0.1:1", "[::1]:2"]
        );
        assert_eq!(
            spaced.endpoints("us-east-1").unwrap(),
            ["https://[2001:db8::1]:8200"]
        );
    }

    #[test]
    fn display_writes_the_text_form_back() {
        let map = RegionMap::new()
            .with_region("us", ["https://us-1:8200"])
            .unwrap()
            .with_region("eu", ["https://eu-1:8200", "eu-2:8200"])
            .unwrap();
        let text = map.to_string();
        assert_eq!(text, "eu=https://eu-1:8200,eu-2:8200;us=https://us-1:8200");
        assert_eq!(parse(&text).unwrap(), map);
    }

    #[test]
    fn bad_maps_are_refused_with_a_clear_error() {
        use RegionMapError as E;
        let cases: &[(&str, RegionMapError)] = &[
            ("", E::NoRegions),
            ("  ; ", E::NoRegions),
            (";eu=a:1", E::EmptyEntry { entry: 1 }),
            ("eu=a:1;;us=b:2", E::EmptyEntry { entry: 2 }),
            (
                "eu",
                E::MissingEquals {
                    entry: 1,
                    text: "eu".into(),
                },
            ),
            ("=a:1", E::EmptyRegion),
            (" =a:1", E::EmptyRegion),
            ("EU=a:1", E::BadRegion("EU".into())),
            ("e=a:1", E::BadRegion("e".into())),
            ("1eu=a:1", E::BadRegion("1eu".into())),
            ("eu=a:1;eu=b:2", E::DuplicateRegion("eu".into())),
            ("eu=", E::NoEndpoints("eu".into())),
            ("eu= ;us=b:2", E::NoEndpoints("eu".into())),
            ("eu=a:1,,b:2", E::EmptyEndpoint("eu".into())),
            ("eu=a:1,", E::EmptyEndpoint("eu".into())),
            (
                "eu=a:1,A:1",
                E::DuplicateEndpoint {
                    region: "eu".into(),
                    address: "A:1".into(),
                    first: "eu".into(),
                },
            ),
            (
                "eu=http://a:1;us=https://a:1",
                E::DuplicateEndpoint {
                    region: "us".into(),
                    address: "https://a:1".into(),
                    first: "eu".into(),
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text).as_ref(), Err(expected), "{text:?}");
        }
        let message = parse("eu=a:1;us=https://a:1").unwrap_err().to_string();
        assert_eq!(
            message,
            "endpoint `https://a:1` of region us is listed already, under region eu"
        );
        assert_eq!(
            parse("eu=").unwrap_err().to_string(),
            "region eu has no endpoint"
        );
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for (address, reason) in [
            ("eu-1", "the port is missing"),
            ("https://eu-1", "the port is missing"),
            ("eu-1:", "not a number"),
            ("eu-1:0", "not a number"),
            ("eu-1:65536", "not a number"),
            ("eu-1:+80", "not a number"),
            ("eu-1:80x", "not a number"),
            (":8200", "the host is empty"),
            ("https://:8200", "the host is empty"),
            ("ftp://eu-1:21", "neither http:// nor https://"),
            ("://eu-1:21", "neither http:// nor https://"),
            ("https://eu-1:8200/v1", "no path"),
            ("https://user@eu-1:8200", "no user name"),
            ("eu 1:8200", "no spaces"),
            ("::1:8200", "in brackets"),
            ("[::1:8200", "closing `]`"),
            ("[nope]:8200", "not an IPv6 address"),
            ("[::1]", "the port is missing"),
            ("[::1]x8200", "the port is missing"),
            ("eu_1!:8200", "may only have"),
            ("-eu:8200", "not a host name"),
            ("eu..x:8200", "not a host name"),
        ] {
            match parse(&format!("eu={address}")) {
                Err(RegionMapError::BadAddress {
                    region,
                    address: a,
                    reason: r,
                }) => {
                    assert_eq!(region, "eu");
                    assert_eq!(a, address.trim());
                    assert!(r.contains(reason), "{address}: {r}");
                }
                other => panic!("{address}: {other:?}"),
            }
        }
        let message = parse("eu=ftp://x:1").unwrap_err().to_string();
        assert_eq!(
            message,
            "endpoint `ftp://x:1` of region eu is not [http://|https://]host:port: \
             the scheme `ftp` is neither http:// nor https://"
        );
    }

    #[test]
    fn a_refused_region_leaves_the_map_unchanged() {
        let mut map = RegionMap::new();
        map.add_region("eu", ["a:1"]).unwrap();
        assert!(map.add_region("us", ["b:2", "a:1"]).is_err());
        assert!(map.add_region("us", Vec::<String>::new()).is_err());
        assert_eq!(map.regions().collect::<Vec<_>>(), ["eu"]);
        // b:2 was not kept from the refused region.
        map.add_region("us", ["b:2"]).unwrap();
        assert_eq!(map.to_string(), "eu=a:1;us=b:2");
        assert!(!map.is_empty());
        assert!(RegionMap::new().is_empty());
    }

    #[tokio::test]
    async fn an_unknown_region_is_named_with_the_known_ones() {
        let map = parse("eu=127.0.0.1:1;us=127.0.0.1:2").unwrap();
        let client = RegionalClient::new(&map, &VaultClient::builder("").token("t")).unwrap();
        match client.region("ap") {
            Err(Error::UnknownRegion { region, known }) => {
                assert_eq!(region, "ap");
                assert_eq!(known, ["eu", "us"]);
            }
            other => panic!("{other:?}"),
        }
        let message = client.region("ap").unwrap_err().to_string();
        assert_eq!(message, "unknown region `ap`: the known regions are eu, us");
        assert_eq!(client.regions().collect::<Vec<_>>(), ["eu", "us"]);

        let eu = client.region("eu").unwrap();
        assert_eq!(eu.region(), "eu");
        assert_eq!(eu.endpoints().collect::<Vec<_>>(), ["http://127.0.0.1:1"]);
        assert_eq!(eu.current_endpoint(), "http://127.0.0.1:1");

        let empty =
            RegionalClient::new(&RegionMap::new(), &VaultClient::builder("").token("t")).unwrap();
        assert!(matches!(
            empty.region("eu"),
            Err(Error::UnknownRegion { known, .. }) if known.is_empty()
        ));
    }

    #[tokio::test]
    async fn the_template_is_checked_for_every_endpoint() {
        let map = parse("eu=127.0.0.1:1").unwrap();
        match RegionalClient::new(&map, &VaultClient::builder("")) {
            Err(Error::InvalidInput(m)) => {
                assert!(
                    m.starts_with("endpoint 127.0.0.1:1 of region eu:") && m.contains("token"),
                    "{m}"
                );
            }
            other => panic!("{other:?}"),
        }
        // The template's token and purpose reach every endpoint's client.
        let template = VaultClient::builder("unused").token("t").purpose("billing");
        let client = RegionalClient::new(&map, &template).unwrap();
        let eu = client.region("eu").unwrap();
        assert_eq!(eu.current_client().purpose(), Some("billing"));
    }

    #[test]
    fn which_errors_fail_over() {
        assert!(endpoint_not_serving(&Error::Connect("refused".into())));
        assert!(endpoint_not_serving(&Error::Unavailable(
            "vault is sealed".into()
        )));
        for answer in [
            Error::NotFound(String::new()),
            Error::PermissionDenied(String::new()),
            Error::Unauthenticated(String::new()),
            Error::InvalidInput(String::new()),
            Error::FailedPrecondition(String::new()),
            Error::OverBudget(String::new()),
            Error::Integrity,
            Error::Timeout,
            Error::Protocol(String::new()),
        ] {
            assert!(!endpoint_not_serving(&answer), "{answer:?}");
        }
    }

    /// An address where nothing listens: a port bound, then let go.
    fn dead_address() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_region_none_of_whose_endpoints_serves_says_so() {
        let (first, second) = (dead_address(), dead_address());
        let map = RegionMap::new()
            .with_region("eu", [&first, &second])
            .unwrap();
        let template = VaultClient::builder("").token("t");
        let eu = RegionalClient::new(&map, &template)
            .unwrap()
            .region("eu")
            .unwrap();
        match eu.get("users", "u1").await {
            Err(Error::AllEndpointsFailed {
                region,
                tried,
                last,
            }) => {
                assert_eq!(region, "eu");
                assert_eq!(tried, [first.clone(), second.clone()]);
                assert!(matches!(*last, Error::Connect(_)), "{last:?}");
            }
            other => panic!("{other:?}"),
        }
        // Nothing answered: the first endpoint is still tried first.
        assert_eq!(eu.current_endpoint(), first);
    }

    /// A region name, for generated maps.
    fn region_name() -> impl proptest::strategy::Strategy<Value = String> {
        "[a-z][a-z0-9-]{1,6}"
    }

    /// An address, for generated maps (duplicates are refused).
    fn address() -> impl proptest::strategy::Strategy<Value = String> {
        "(https?://)?([a-z]{1,5}|127\\.0\\.0\\.[0-9]|\\[::[0-9]\\]):[1-9][0-9]{0,3}"
    }

    proptest::proptest! {
        #[test]
        fn generated_maps_write_back_to_themselves(
            regions in proptest::collection::vec(
                (region_name(), proptest::collection::vec(address(), 1..4)),
                1..4,
            )
        ) {
            let text = regions
                .iter()
                .map(|(region, addresses)| format!("{region} = {}", addresses.join(" , ")))
                .collect::<Vec<_>>()
                .join(" ; ");
            let mut built = RegionMap::new();
            let built = regions
                .iter()
                .try_for_each(|(region, addresses)| built.add_region(region, addresses))
                .map(|()| built);
            // The text and the code agree, and what parses writes back.
            proptest::prop_assert_eq!(parse(&text), built.clone());
            if let Ok(map) = built {
                proptest::prop_assert_eq!(parse(&map.to_string()), Ok(map));
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in proptest::prelude::any::<String>()) {
            let _ = parse(&text);
        }

        #[test]
        fn text_of_map_characters_never_panics(text in "[a-z0-9=;,:/\\[\\]. \\-]{0,64}") {
            if let Ok(map) = parse(&text) {
                // What parses writes back to the same map.
                proptest::prop_assert_eq!(parse(&map.to_string()), Ok(map));
            }
        }
    }
}
