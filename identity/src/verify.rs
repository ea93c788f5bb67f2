//! Verifying a peer's X.509 SVID: the chain against the current trust
//! bundle (webpki: signatures, validity, CA constraints, key usage), then
//! its SPIFFE ID — never its DNS names, which SVIDs do not rely on. The two
//! rustls verifiers here are the only places a peer is trusted: the server
//! side (inbound) accepts any SPIFFE ID that chains to the bundle and leaves
//! who may call what to authorization; the client side (outbound) accepts
//! only the identity the config says the destination has.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use crate::credentials::TrustBundle;
use crate::spiffe::SpiffeId;
use crate::store::IdentityStore;
use crate::svid::SvidInfo;

/// What the peer's certificate is being used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A client authenticating to a server (the inbound side).
    Client,
    /// A server authenticating to a client (the outbound side).
    Server,
    /// Our own SVID, which is used both ways.
    Either,
}

/// Why a peer certificate was refused, in words an operator acts on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no trust bundle is held yet")]
    NoBundle,
    #[error("certificate rejected: {0}")]
    Chain(String),
    #[error("certificate is not an SVID: {0}")]
    NotAnSvid(String),
    #[error("peer is {actual}, expected {expected}")]
    WrongIdentity {
        expected: SpiffeId,
        actual: SpiffeId,
    },
}

/// Verifies `leaf` (with the peer's `intermediates`) against `bundle` at
/// `now` for `usage`, and returns the SVID it carries.
pub fn chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    usage: Usage,
    now: UnixTime,
) -> Result<SvidInfo, rustls::Error> {
    let info = SvidInfo::of_leaf(leaf).map_err(|e| other(VerifyError::NotAnSvid(e.to_string())))?;
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(pki_error)?;
    let algorithms = algorithms().all;
    let verify = |usage| {
        cert.verify_for_usage(
            algorithms,
            bundle.anchors(),
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map(|_| ())
        .map_err(pki_error)
    };
    match usage {
        Usage::Client => verify(webpki::KeyUsage::client_auth())?,
        Usage::Server => verify(webpki::KeyUsage::server_auth())?,
        Usage::Either => {
            verify(webpki::KeyUsage::client_auth())?;
            verify(webpki::KeyUsage::server_auth())?;
        }
    }
    Ok(info)
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// rustls's own certificate errors where one fits (they become the right
/// TLS alert: certificate_expired, unknown_ca, ...), the webpki reason
/// otherwise.
fn pki_error(error: webpki::Error) -> rustls::Error {
    use webpki::Error::*;
    let kind = match error {
        BadDer | BadDerTime => CertificateError::BadEncoding,
        CertExpired { .. } | InvalidCertValidity => CertificateError::Expired,
        CertNotValidYet { .. } => CertificateError::NotValidYet,
        UnknownIssuer => CertificateError::UnknownIssuer,
        InvalidSignatureForPublicKey | UnsupportedSignatureAlgorithmContext(_) => {
            CertificateError::BadSignature
        }
        other => return self::other(VerifyError::Chain(other.to_string())),
    };
    rustls::Error::InvalidCertificate(kind)
}

fn other(error: VerifyError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

/// The inbound side's verifier: any SVID that chains to the current bundle
/// is accepted; whether a client must present one is the server's choice.
#[derive(Debug)]
pub struct ClientSvidVerifier {
    store: Arc<IdentityStore>,
    mandatory: bool,
}

impl ClientSvidVerifier {
    pub fn new(store: Arc<IdentityStore>, mandatory: bool) -> Self {
        ClientSvidVerifier { store, mandatory }
    }
}

impl ClientCertVerifier for ClientSvidVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a client presents its one SVID whatever the CA names.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bundle = self
            .store
            .bundle()
            .ok_or_else(|| other(VerifyError::NoBundle))?;
        chain(end_entity, intermediates, &bundle, Usage::Client, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// The outbound side's verifier: the server's SVID must chain to the
/// current bundle and name exactly the `expected` identity. The TLS server
/// name is not consulted (SVIDs need not carry DNS names).
#[derive(Debug)]
pub struct ServerSvidVerifier {
    store: Arc<IdentityStore>,
    expected: SpiffeId,
}

impl ServerSvidVerifier {
    pub fn new(store: Arc<IdentityStore>, expected: SpiffeId) -> Self {
        ServerSvidVerifier { store, expected }
    }
}

impl ServerCertVerifier for ServerSvidVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bundle = self
            .store
            .bundle()
            .ok_or_else(|| other(VerifyError::NoBundle))?;
        let svid = chain(end_entity, intermediates, &bundle, Usage::Server, now)?;
        if svid.id != self.expected {
            return Err(other(VerifyError::WrongIdentity {
                expected: self.expected.clone(),
                actual: svid.id,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// A handshake error in words: our own verification reasons by their
/// message (rustls would show them with `Debug`), the rest as rustls says.
pub fn describe(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.to_string()
        }
        rustls::Error::InvalidCertificate(kind) => format!("{kind:?}"),
        other => other.to_string(),
    }
}

/// A short label for a failed handshake, for metrics (a fixed set, so the
/// label cannot grow without bound).
pub fn reason(error: &rustls::Error) -> &'static str {
    use rustls::Error::*;
    match error {
        InvalidCertificate(kind) => match kind {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "untrusted",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::Other(OtherError(inner)) => {
                match inner.downcast_ref::<VerifyError>() {
                    Some(VerifyError::WrongIdentity { .. }) => "wrong_identity",
                    Some(VerifyError::NotAnSvid(_)) => "not_an_svid",
                    Some(VerifyError::NoBundle) => "no_bundle",
                    Some(VerifyError::Chain(_)) | None => "bad_certificate",
                }
            }
            _ => "bad_certificate",
        },
        NoCertificatesPresented => "no_client_certificate",
        AlertReceived(_) => "peer_refused",
        InvalidMessage(_) | InappropriateMessage { .. } | InappropriateHandshakeMessage { .. } => {
            "not_tls"
        }
        PeerIncompatible(_) => "incompatible",
        _ => "other",
    }
}
