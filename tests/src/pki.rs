//! A test PKI: a real CA (gridmesh-identity's [`Authority`]) that issues
//! SVIDs into PEM files, and the bootstrap `identity` section naming them,
//! so sidecars under test load their identity exactly as in production.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gridmesh_identity::credentials::pem;
use gridmesh_identity::{Authority, SpiffeId};
use rcgen::{CertificateParams, KeyPair, SanType};
use tempfile::TempDir;

pub const TRUST_DOMAIN: &str = "gridmesh.test";
const DAY: Duration = Duration::from_secs(86_400);

pub struct TestPki {
    pub ca: Authority,
    dir: TempDir,
}

/// One workload's files.
#[derive(Debug, Clone)]
pub struct WorkloadFiles {
    pub id: SpiffeId,
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    pub trust_bundle: PathBuf,
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

impl TestPki {
    pub fn new() -> TestPki {
        TestPki {
            ca: Authority::self_signed(TRUST_DOMAIN, DAY).unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `spiffe://gridmesh.test/ns/test/sa/<name>`.
    pub fn id(name: &str) -> SpiffeId {
        SpiffeId::for_workload(TRUST_DOMAIN, "test", name).unwrap()
    }

    /// An SVID for `name`, valid for a day, in files of its own.
    pub fn workload(&self, name: &str) -> WorkloadFiles {
        self.workload_with(name, |_| {})
    }

    /// An SVID for `name` whose parameters `adjust` may change first (a DNS
    /// SAN for curl, an expiry in the past, no SPIFFE ID at all...).
    pub fn workload_with(
        &self,
        name: &str,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> WorkloadFiles {
        let id = TestPki::id(name);
        let mut params = Authority::svid_params(&id, DAY).unwrap();
        adjust(&mut params);
        let key = KeyPair::generate().unwrap();
        let leaf = self.ca.sign(&params, &key).unwrap();
        self.write(name, id, &[leaf.as_ref()], &key, &self.bundle_pem())
    }

    /// A fresh SVID (new key, new certificate) from this CA for the same
    /// identity, written over `files` (which another CA may have issued: a
    /// root rotation).
    pub fn renew(&self, files: &WorkloadFiles) {
        let key = KeyPair::generate().unwrap();
        let chain = self.ca.issue(&files.id, &key, DAY).unwrap();
        let chain: String = chain.iter().map(|der| pem("CERTIFICATE", der)).collect();
        replace(&files.private_key, pem("PRIVATE KEY", &key.serialize_der()));
        replace(&files.certificate, chain);
    }

    /// Writes `bundle_pem` over the trust bundle of `files`.
    pub fn replace_bundle(files: &WorkloadFiles, bundle_pem: &str) {
        replace(&files.trust_bundle, bundle_pem.to_string());
    }

    /// Files for `name` holding exactly these: for sets that are wrong on
    /// purpose (a key of another certificate, a bundle of another CA).
    pub fn write(
        &self,
        name: &str,
        id: SpiffeId,
        chain: &[&[u8]],
        key: &KeyPair,
        bundle_pem: &str,
    ) -> WorkloadFiles {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let files = WorkloadFiles {
            id,
            certificate: dir.join("cert.pem"),
            private_key: dir.join("key.pem"),
            trust_bundle: dir.join("bundle.pem"),
        };
        let chain: String = chain.iter().map(|der| pem("CERTIFICATE", der)).collect();
        std::fs::write(&files.certificate, chain).unwrap();
        std::fs::write(&files.private_key, pem("PRIVATE KEY", &key.serialize_der())).unwrap();
        std::fs::write(&files.trust_bundle, bundle_pem).unwrap();
        files
    }

    /// The CA's certificate as a PEM bundle.
    pub fn bundle_pem(&self) -> String {
        pem("CERTIFICATE", self.ca.certificate())
    }
}

/// Replaces a file the way cert-manager and SPIRE's helper do: written
/// aside and renamed into place, so a reader never sees half of it.
fn replace(path: &Path, text: String) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// Adds a DNS SAN, for clients that verify a host name (curl, grpcio).
pub fn with_dns_name(name: &str) -> impl FnOnce(&mut CertificateParams) + '_ {
    move |params| {
        params
            .subject_alt_names
            .push(SanType::DnsName(name.try_into().unwrap()));
    }
}

impl WorkloadFiles {
    /// The bootstrap's `identity:` section for these files.
    pub fn yaml(&self) -> String {
        format!(
            "identity: {{ files: {{ certificate: \"{}\", privateKey: \"{}\", trustBundle: \"{}\" }} }}\n",
            self.certificate.display(),
            self.private_key.display(),
            self.trust_bundle.display()
        )
    }
}
