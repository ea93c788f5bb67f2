//! The identity a process holds right now: its credentials and trust
//! bundle, swapped whole when they are rotated or re-read. TLS configs built
//! from a store read it on every handshake, so a rotation reaches the next
//! connection without rebuilding anything, and connections already open
//! keep going on the certificate they started with.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use tokio::sync::watch;

use crate::credentials::{Credentials, TrustBundle, provider};
use crate::spiffe::SpiffeId;
use crate::verify::{ClientSvidVerifier, ServerSvidVerifier};

/// ALPN protocol names, in the order a server prefers them.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

#[derive(Debug)]
pub struct IdentityStore {
    credentials: ArcSwapOption<Credentials>,
    bundle: ArcSwapOption<TrustBundle>,
    /// Bumped on every change, so watchers (readiness, metrics, rotation)
    /// wake up.
    generation: watch::Sender<u64>,
    /// Why the latest attempt to take new credentials failed, until one succeeds.
    last_error: Mutex<Option<String>>,
    installed: AtomicU64,
    refused: AtomicU64,
}

/// What `/config_dump` and metrics show about the held identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityStatus {
    pub id: Option<SpiffeId>,
    pub not_before: Option<SystemTime>,
    pub not_after: Option<SystemTime>,
    pub roots: usize,
    pub last_error: Option<String>,
    /// Credentials taken, and sets refused, since the store was made.
    pub installed: u64,
    pub refused: u64,
}

impl Default for IdentityStore {
    fn default() -> Self {
        IdentityStore {
            credentials: ArcSwapOption::empty(),
            bundle: ArcSwapOption::empty(),
            generation: watch::Sender::new(0),
            last_error: Mutex::new(None),
            installed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }
}

impl IdentityStore {
    pub fn new() -> Arc<IdentityStore> {
        Arc::new(IdentityStore::default())
    }

    /// Takes new credentials and the bundle they were checked against.
    pub fn install(&self, credentials: Credentials, bundle: TrustBundle) {
        tracing::info!(
            id = %credentials.id(),
            roots = bundle.roots().len(),
            not_after = %humantime_utc(credentials.svid.not_after),
            "identity installed"
        );
        self.bundle.store(Some(Arc::new(bundle)));
        self.credentials.store(Some(Arc::new(credentials)));
        *self.last_error.lock() = None;
        self.installed.fetch_add(1, Ordering::Relaxed);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Takes a trust bundle alone: what a workload verifies the CA with
    /// before it has a certificate of its own.
    pub fn install_bundle(&self, bundle: TrustBundle) {
        self.bundle.store(Some(Arc::new(bundle)));
        self.generation.send_modify(|g| *g += 1);
    }

    /// Records why new credentials were not taken; what is held stays.
    pub fn failed(&self, error: String) {
        *self.last_error.lock() = Some(error);
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn credentials(&self) -> Option<Arc<Credentials>> {
        self.credentials.load_full()
    }

    pub fn bundle(&self) -> Option<Arc<TrustBundle>> {
        self.bundle.load_full()
    }

    /// Whether a certificate is held (the sidecar is not ready before).
    pub fn is_ready(&self) -> bool {
        self.credentials.load().is_some()
    }

    /// Wakes on every change (install or failure).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn status(&self) -> IdentityStatus {
        let credentials = self.credentials();
        IdentityStatus {
            id: credentials.as_ref().map(|c| c.id().clone()),
            not_before: credentials.as_ref().map(|c| c.svid.not_before),
            not_after: credentials.as_ref().map(|c| c.svid.not_after),
            roots: self.bundle().map_or(0, |b| b.roots().len()),
            last_error: self.last_error.lock().clone(),
            installed: self.installed.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// A TLS 1.3 server config that asks for a client SVID (`client`
    /// says whether one is required) and offers `alpn` (most preferred
    /// first).
    pub fn server_config(
        self: &Arc<Self>,
        alpn: &[&[u8]],
        client: ClientAuth,
    ) -> Arc<ServerConfig> {
        let verifier = ClientSvidVerifier::new(self.clone(), client == ClientAuth::Required);
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(Presented(self.clone())));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A TLS 1.3 client config that presents this store's SVID, accepts
    /// only a server whose SVID names `expected`, and offers `alpn`.
    pub fn client_config(
        self: &Arc<Self>,
        expected: SpiffeId,
        alpn: &[&[u8]],
    ) -> Arc<ClientConfig> {
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerSvidVerifier::new(
                self.clone(),
                expected,
            )))
            .with_client_cert_resolver(Arc::new(Presented(self.clone())));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// Whether a server requires clients to present an SVID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// mTLS only (sidecar listeners).
    Required,
    /// An SVID is verified when presented, and a client without one is let
    /// in (the CA's first request authenticates with a token instead).
    Optional,
}

/// Presents the store's current SVID, on either side of a handshake.
#[derive(Debug)]
struct Presented(Arc<IdentityStore>);

impl Presented {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0
            .credentials
            .load()
            .as_ref()
            .map(|c| c.certified.clone())
    }
}

impl ResolvesServerCert for Presented {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for Presented {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.0.is_ready()
    }
}

/// RFC 3339 in UTC, for log lines and `/config_dump`.
pub fn humantime_utc(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}
