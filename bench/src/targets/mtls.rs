//! The PKI of an mTLS target: a CA (gridmesh-identity's, through the test
//! PKI of gridmesh-tests) issuing each hop's SVID into files, which the
//! sidecars read as they would in production, and the load generator's own
//! certificate for reaching the inbound hop's STRICT listener directly.

use anyhow::{Context, Result};
use gridmesh_identity::{Credentials, SpiffeId};
use gridmesh_tests::pki::{TestPki, WorkloadFiles};

use crate::load::clients::TlsClient;

/// The inbound hop's service account: the identity callers expect.
const INBOUND: &str = "inbound";

pub struct MeshPki(TestPki);

/// One hop's certificate files and its side of the mTLS hop.
pub struct HopIdentity {
    pub files: WorkloadFiles,
    /// The inbound hop: its listener takes mTLS only (STRICT).
    pub strict: bool,
    /// The SPIFFE ID the hop's next hop must present (the outbound hop).
    pub upstream: Option<SpiffeId>,
}

impl MeshPki {
    pub fn new() -> Result<MeshPki> {
        Ok(MeshPki(TestPki::new()))
    }

    /// The identity of a hop: the inbound one, or an outbound one calling it.
    pub fn hop(&self, index: u8, inbound: bool) -> HopIdentity {
        let name = if inbound {
            INBOUND.to_string()
        } else {
            format!("outbound-{index}")
        };
        HopIdentity {
            files: self.0.workload(&name),
            strict: inbound,
            upstream: (!inbound).then(|| TestPki::id(INBOUND)),
        }
    }

    /// A client certificate for the load generator, and the inbound hop's
    /// identity to verify.
    pub fn load_generator(&self) -> Result<TlsClient> {
        let files = self.0.workload("load-generator");
        let bundle = self.0.ca.bundle()?;
        let chain =
            std::fs::read(&files.certificate).context("the load generator's certificate")?;
        let key = std::fs::read(&files.private_key).context("the load generator's key")?;
        let credentials = Credentials::from_pem(&chain, &key, &bundle)?;
        Ok(TlsClient::new(credentials, bundle, TestPki::id(INBOUND)))
    }
}
