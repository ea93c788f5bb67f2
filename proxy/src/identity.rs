//! The sidecar's own identity: started from the bootstrap's source and
//! kept current by it — files re-read on change, or certificates from the
//! control plane's CA renewed at 50-70% of their life — and shown in
//! metrics: expiry, and how many updates were taken or refused.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gridmesh_config::{ControlPlaneIdentity, IdentitySource};
use gridmesh_identity::ca::certificate_request;
use gridmesh_identity::credentials::pem;
use gridmesh_identity::files::FilesError;
use gridmesh_identity::{Credentials, IdentityStore, SpiffeId, TrustBundle};
use gridmesh_proto::config as pb;
use gridmesh_proto::gridmesh::v1::SignRequest;
use gridmesh_proto::gridmesh::v1::certificate_authority_client::CertificateAuthorityClient;
use rand::RngExt;

use crate::control_plane::{self, ControlPlaneTls};
use crate::metrics::IdentityMetrics;
use crate::shared::Identity;

/// Retries after a failed certificate request start here and double.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Starts following `source`. The store may still be empty when this
/// returns (the files are not there yet, the CA has not answered): the
/// sidecar then stays unready until a good certificate arrives.
pub fn start(
    source: IdentitySource,
    metrics: IdentityMetrics,
    xds: Option<&pb::Xds>,
) -> Result<Identity, FilesError> {
    let store = IdentityStore::new();
    let changes = store.watch();
    match &source {
        IdentitySource::Files(files) => {
            files.clone().follow(store.clone())?;
        }
        IdentitySource::ControlPlane(cp) => {
            // Validation requires both with a control-plane source.
            if let Some((address, Ok(expected))) =
                xds.map(|x| (x.address.clone(), SpiffeId::parse(&x.identity)))
            {
                let tls = ControlPlaneTls {
                    store: store.clone(),
                    expected,
                };
                tokio::spawn(renew(cp.clone(), address, tls));
            }
        }
    }
    tokio::spawn(export(Arc::downgrade(&store), changes, metrics));
    Ok(Identity { source, store })
}

/// Keeps the metrics in step with the store.
async fn export(
    store: std::sync::Weak<IdentityStore>,
    mut changes: tokio::sync::watch::Receiver<u64>,
    metrics: IdentityMetrics,
) {
    let (mut installed, mut refused) = (0, 0);
    loop {
        let Some(held) = store.upgrade() else {
            return;
        };
        let status = held.status();
        drop(held);
        if let Some(not_after) = status.not_after {
            metrics.expiry.set(unix_seconds(not_after));
        }
        metrics.installed.inc_by(status.installed - installed);
        metrics.refused.inc_by(status.refused - refused);
        (installed, refused) = (status.installed, status.refused);
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Gets a certificate from the CA, then a new one after 50-70% of each
/// one's life (jittered, so a fleet started together does not renew
/// together);
/// a failure is retried with backoff while the held certificate serves on.
async fn renew(cp: ControlPlaneIdentity, address: String, tls: ControlPlaneTls) {
    let store = tls.store.clone();
    let mut failures = 0u32;
    loop {
        let wait = match request(&cp, &address, &tls).await {
            Ok((credentials, bundle)) => {
                failures = 0;
                let next = renewal_delay(&credentials);
                store.install(credentials, bundle);
                next
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(%error, address = %address, "certificate request failed; retrying");
                store.failed(error);
                let exponent = failures.saturating_sub(1).min(16);
                FIRST_RETRY
                    .saturating_mul(1 << exponent)
                    .min(MAX_RETRY)
                    .mul_f64(rand::rng().random_range(0.8..1.2))
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// One CSR: a fresh key, proved with the held certificate when it is still
/// valid (renewal over mTLS), with the bootstrap token otherwise.
async fn request(
    cp: &ControlPlaneIdentity,
    address: &str,
    tls: &ControlPlaneTls,
) -> Result<(Credentials, TrustBundle), String> {
    let store = &tls.store;
    if store.bundle().is_none() {
        let roots = std::fs::read(&cp.trust_bundle)
            .map_err(|e| format!("cannot read {}: {e}", cp.trust_bundle.display()))?;
        let bundle = TrustBundle::from_pem(&roots)
            .map_err(|e| format!("{}: {e}", cp.trust_bundle.display()))?;
        store.install_bundle(bundle);
    }
    let held_valid = store
        .credentials()
        .is_some_and(|c| c.svid.not_after > SystemTime::now());
    let (key, csr) = certificate_request(&cp.id).map_err(|e| e.to_string())?;
    let mut message = tonic::Request::new(SignRequest {
        csr,
        lifetime: Some(cp.lifetime.into()),
    });
    if !held_valid {
        let token = std::fs::read_to_string(&cp.token_file)
            .map_err(|e| format!("cannot read the token {}: {e}", cp.token_file.display()))?;
        let value = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| format!("{} does not hold a token", cp.token_file.display()))?;
        message.metadata_mut().insert("authorization", value);
    }
    let channel = control_plane::connect(address, Some(tls)).await?;
    let signed = CertificateAuthorityClient::new(channel)
        .sign(message)
        .await
        .map_err(|status| format!("the CA refused: {:?}: {}", status.code(), status.message()))?
        .into_inner();
    let bundle = TrustBundle::from_pem(signed.trust_bundle.concat().as_bytes())
        .map_err(|e| format!("the CA's trust bundle: {e}"))?;
    let key = pem("PRIVATE KEY", &key.serialize_der());
    let credentials = Credentials::from_pem(
        signed.certificate_chain.concat().as_bytes(),
        key.as_bytes(),
        &bundle,
    )
    .map_err(|e| format!("the CA's certificate: {e}"))?;
    Ok((credentials, bundle))
}

/// 50-70% of the time the certificate has left, counted from now, when it
/// has just arrived. Not from its `notBefore`: CAs backdate it (gridmesh's
/// by a minute) for peers whose clocks lag, which with a short lifetime
/// would put the renewal in the past and renew without pause.
fn renewal_delay(credentials: &Credentials) -> Duration {
    let left = credentials
        .svid
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    left.mul_f64(rand::rng().random_range(0.5..0.7))
}

fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
