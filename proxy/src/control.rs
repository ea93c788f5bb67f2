//! The control thread: the admin server and the xDS client run here, on a
//! runtime of their own, so that scrapes, dumps and config conversion never
//! take time from the data-plane workers, and stay responsive when those
//! are saturated.

use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::shared::Shared;
use crate::{admin, xds};

/// The control thread, started before the rest of the proxy so that work
/// meant for it (span export) can be given its runtime's handle first. It
/// serves once told what to; if the proxy's start fails before that, it
/// ends, and its runtime is dropped on its own thread, not in the caller's
/// async context.
pub struct ControlThread {
    handle: Handle,
    serve: oneshot::Sender<Serve>,
}

struct Serve {
    admin_listener: std::net::TcpListener,
    shared: Arc<Shared>,
    xds: Option<xds::Client>,
}

pub fn start() -> std::io::Result<ControlThread> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    let (serve, told) = oneshot::channel::<Serve>();
    std::thread::Builder::new()
        .name("gridmesh-control".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(Serve {
                    admin_listener,
                    shared,
                    xds,
                }) = told.await
                else {
                    return;
                };
                let xds_status = xds.as_ref().map(xds::Client::status);
                if let Some(client) = xds {
                    tokio::spawn(client.run(shared.clone()));
                }
                admin::serve(admin_listener, shared, xds_status).await
            })
        })?;
    Ok(ControlThread { handle, serve })
}

impl ControlThread {
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Serves the admin API and follows the control plane, if any.
    pub fn serve(
        self,
        admin_listener: std::net::TcpListener,
        shared: Arc<Shared>,
        xds: Option<xds::Client>,
    ) -> std::io::Result<()> {
        admin_listener.set_nonblocking(true)?;
        let serve = Serve {
            admin_listener,
            shared,
            xds,
        };
        self.serve
            .send(serve)
            .map_err(|_| std::io::Error::other("the control thread has ended"))
    }
}
