//! `gridmesh.v1.CertificateAuthority/Sign`: who the caller is (its
//! certificate over mTLS, to renew; else its bootstrap token), then the
//! CSR, signed only for that identity.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gridmesh_identity::SpiffeId;
use gridmesh_identity::ca::CaError as SignError;
use gridmesh_identity::credentials::pem;
use gridmesh_proto::gridmesh::v1::certificate_authority_server::{
    CertificateAuthority, CertificateAuthorityServer,
};
use gridmesh_proto::gridmesh::v1::{SignRequest, SignResponse};
use tonic::{Request, Response, Status};

use super::Ca;
use super::tokens::Grant;
use crate::Shared;
use crate::tls::PeerIdentity;

pub(crate) fn service(ca: Arc<Ca>, shared: Arc<Shared>) -> CertificateAuthorityServer<Signer> {
    CertificateAuthorityServer::new(Signer { ca, shared })
}

pub struct Signer {
    ca: Arc<Ca>,
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl CertificateAuthority for Signer {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let result = self.sign_for_caller(&request);
        match &result {
            Ok((granted, _)) => {
                self.shared.metrics.ca_signed();
                tracing::info!(id = %granted, "signed a workload certificate");
            }
            Err((reason, status)) => {
                self.shared.metrics.ca_refused(reason);
                tracing::warn!(
                    reason = %reason,
                    error = %status.message(),
                    "refused a certificate request"
                );
            }
        }
        result
            .map(|(_, response)| Response::new(response))
            .map_err(|(_, status)| status)
    }
}

type Refusal = (&'static str, Status);

impl Signer {
    fn sign_for_caller(
        &self,
        request: &Request<SignRequest>,
    ) -> Result<(SpiffeId, SignResponse), Refusal> {
        let granted = self.authenticate(request)?;
        let options = &self.ca.options;
        let lifetime = match request.get_ref().lifetime.map(Duration::try_from) {
            None => options.default_lifetime,
            Some(Ok(asked)) if !asked.is_zero() => asked.min(options.max_lifetime),
            Some(_) => {
                return Err((
                    "malformed",
                    Status::invalid_argument("lifetime must be positive"),
                ));
            }
        };
        let chain = self
            .ca
            .authority
            .sign_csr(&request.get_ref().csr, &granted, lifetime)
            .map_err(|error| match error {
                SignError::NotYours { .. } => {
                    ("not_yours", Status::permission_denied(error.to_string()))
                }
                SignError::MalformedCsr(_) => {
                    ("malformed", Status::invalid_argument(error.to_string()))
                }
                other => ("internal", Status::internal(other.to_string())),
            })?;
        let bundle = self
            .ca
            .authority
            .bundle()
            .map_err(|e| ("internal", Status::internal(e.to_string())))?;
        Ok((
            granted,
            SignResponse {
                certificate_chain: chain.iter().map(|c| pem("CERTIFICATE", c)).collect(),
                trust_bundle: bundle
                    .roots()
                    .iter()
                    .map(|c| pem("CERTIFICATE", c))
                    .collect(),
            },
        ))
    }

    /// The identity the caller proved: the SPIFFE ID of the certificate it
    /// presented (renewal), or the grant of its bootstrap token.
    fn authenticate(&self, request: &Request<SignRequest>) -> Result<SpiffeId, Refusal> {
        if let Some(PeerIdentity(Some(id), _)) = request.extensions().get::<PeerIdentity>() {
            return Ok(id.clone());
        }
        let unauthenticated = |why: String| ("unauthenticated", Status::unauthenticated(why));
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                unauthenticated(
                    "no credential: send `authorization: Bearer <token>` or present a workload certificate"
                        .into(),
                )
            })?;
        let Grant {
            namespace,
            service_account,
        } = self
            .ca
            .tokens
            .verify(token, SystemTime::now())
            .map_err(|e| unauthenticated(e.to_string()))?;
        SpiffeId::for_workload(&self.ca.options.trust_domain, &namespace, &service_account)
            .map_err(|e| unauthenticated(e.to_string()))
    }
}
