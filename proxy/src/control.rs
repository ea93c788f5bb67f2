//! The control thread: the admin server and the xDS client run here, on a
//! runtime of their own, so that scrapes, dumps and config conversion never
//! take time from the data-plane workers, and stay responsive when those
//! are saturated.

use std::sync::Arc;

use crate::shared::Shared;
use crate::{admin, xds};

/// The control thread's runtime, made before the thread starts so that
/// work meant for it (span export) can be given its handle first.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

pub fn spawn(
    runtime: tokio::runtime::Runtime,
    admin_listener: std::net::TcpListener,
    shared: Arc<Shared>,
    xds: Option<xds::Client>,
) -> std::io::Result<()> {
    admin_listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("gridmesh-control".into())
        .spawn(move || {
            runtime.block_on(async move {
                let xds_status = xds.as_ref().map(xds::Client::status);
                if let Some(client) = xds {
                    tokio::spawn(client.run(shared.clone()));
                }
                admin::serve(admin_listener, shared, xds_status).await
            })
        })?;
    Ok(())
}
