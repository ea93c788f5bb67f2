//! The certificate authority (`--ca-dir`): signs workload SVIDs in answer
//! to CSRs on the xDS port, and gives the control plane its own SVID to
//! serve that port with. The CA key and certificate come from the
//! directory — an operator's intermediate with `roots.pem` naming their
//! roots, or, for local use, a self-signed root made on first start and
//! kept there — as does the key bootstrap tokens are signed with.

mod service;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gridmesh_identity::{Authority, IdentityStore, SpiffeId};

pub(crate) use service::service;
use tokens::TokenKey;

/// The CA's certificate chain (its own certificate first).
pub const CA_CERT_FILE: &str = "ca-cert.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The roots workloads trust; without it the CA's own certificate (a
/// self-signed root).
pub const ROOTS_FILE: &str = "roots.pem";
pub const TOKEN_KEY_FILE: &str = "token-key";
/// A self-signed root made for local use lives this long.
const SELF_SIGNED_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Where the control plane's own identity lives in its trust domain.
pub const CONTROL_PLANE_NAMESPACE: &str = "gridmesh-system";
pub const CONTROL_PLANE_SERVICE_ACCOUNT: &str = "gridmesh-control";

#[derive(Debug, Clone)]
pub struct CaOptions {
    pub dir: PathBuf,
    pub trust_domain: String,
    /// What a certificate lives when the CSR asks for nothing.
    pub default_lifetime: Duration,
    /// The most a CSR may ask for.
    pub max_lifetime: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Authority(#[from] gridmesh_identity::ca::CaError),
    #[error("{path} holds no token key (64 hex digits)")]
    TokenKey { path: PathBuf },
    #[error("cannot generate a key: no system randomness")]
    Random,
    #[error("{dir} has {present} but not {missing}: give both or neither")]
    HalfPresent {
        dir: PathBuf,
        present: &'static str,
        missing: &'static str,
    },
    #[error("{0}")]
    Identity(#[from] gridmesh_identity::SpiffeIdError),
}

pub struct Ca {
    pub authority: Authority,
    pub tokens: TokenKey,
    pub options: CaOptions,
}

impl Ca {
    /// Opens the CA in `options.dir`, making a self-signed root and a token
    /// key there first when it holds neither.
    pub fn open(options: CaOptions) -> Result<Ca, CaError> {
        let dir = &options.dir;
        std::fs::create_dir_all(dir).map_err(|source| CaError::File {
            path: dir.clone(),
            source,
        })?;
        let (cert, key) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        let authority = match (cert.exists(), key.exists()) {
            (false, false) => {
                let authority =
                    Authority::self_signed(&options.trust_domain, SELF_SIGNED_LIFETIME)?;
                write_private(&key, &authority.key_pem())?;
                write(
                    &cert,
                    &gridmesh_identity::credentials::pem("CERTIFICATE", authority.certificate()),
                )?;
                tracing::info!(dir = %dir.display(), trust_domain = %options.trust_domain, "made a self-signed CA");
                authority
            }
            (true, true) => {
                let roots_path = dir.join(ROOTS_FILE);
                let chain = read(&cert)?;
                let roots = if roots_path.exists() {
                    read(&roots_path)?
                } else {
                    chain.clone()
                };
                Authority::from_pem(&options.trust_domain, &chain, &read(&key)?, &roots)?
            }
            (present, _) => {
                let (present, missing) = if present {
                    (CA_CERT_FILE, CA_KEY_FILE)
                } else {
                    (CA_KEY_FILE, CA_CERT_FILE)
                };
                return Err(CaError::HalfPresent {
                    dir: dir.clone(),
                    present,
                    missing,
                });
            }
        };
        let tokens = open_token_key(dir)?;
        Ok(Ca {
            authority,
            tokens,
            options,
        })
    }

    /// The control plane's own identity.
    pub fn own_id(&self) -> Result<SpiffeId, CaError> {
        Ok(SpiffeId::for_workload(
            &self.options.trust_domain,
            CONTROL_PLANE_NAMESPACE,
            CONTROL_PLANE_SERVICE_ACCOUNT,
        )?)
    }

    /// A store holding the control plane's own SVID, renewed at half its
    /// life for as long as the returned store is used.
    pub fn serving_identity(self: &Arc<Self>) -> Result<Arc<IdentityStore>, CaError> {
        let id = self.own_id()?;
        let store = IdentityStore::new();
        let lifetime = self.options.default_lifetime;
        let (credentials, _) = self.authority.issue_with_key(&id, lifetime)?;
        store.install(credentials, self.authority.bundle()?);
        let (ca, weak) = (self.clone(), Arc::downgrade(&store));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(lifetime / 2).await;
                let Some(store) = weak.upgrade() else { return };
                match ca.authority.issue_with_key(&id, lifetime) {
                    Ok((credentials, _)) => match ca.authority.bundle() {
                        Ok(bundle) => store.install(credentials, bundle),
                        Err(error) => store.failed(error.to_string()),
                    },
                    Err(error) => store.failed(error.to_string()),
                }
            }
        });
        Ok(store)
    }
}

fn open_token_key(dir: &Path) -> Result<TokenKey, CaError> {
    let path = dir.join(TOKEN_KEY_FILE);
    if path.exists() {
        return TokenKey::from_hex(&read(&path)?).ok_or(CaError::TokenKey { path });
    }
    let (key, hex) = TokenKey::generate().map_err(|_| CaError::Random)?;
    write_private(&path, &hex)?;
    Ok(key)
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::File {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, text: &str) -> Result<(), CaError> {
    std::fs::write(path, text).map_err(|source| CaError::File {
        path: path.to_owned(),
        source,
    })
}

/// Written readable by the owner only: a key.
fn write_private(path: &Path, text: &str) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let error = |source| CaError::File {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(error)?;
    file.write_all(text.as_bytes()).map_err(error)
}
