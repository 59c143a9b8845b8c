//! The proxy listener: accepts connections and gives each its own session task.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::gateway::Gateway;
use super::session;
use super::workers::Workers;

/// Bind the configured address (so errors reach the caller before anything runs).
pub async fn bind(gw: &Gateway) -> std::io::Result<TcpListener> {
    TcpListener::bind(&gw.config.listen).await
}

/// Accept connections and hand each to a session thread. The accepted socket is moved as a std
/// socket because a tokio socket belongs to the runtime that registered it.
pub async fn serve(gw: Arc<Gateway>, listener: TcpListener, workers: Arc<Workers>) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let gw = Arc::clone(&gw);
                let std_tcp = match tcp.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!("cannot hand over a connection: {e}");
                        continue;
                    }
                };
                workers.spawn(async move {
                    match tokio::net::TcpStream::from_std(std_tcp) {
                        Ok(tcp) => session::run(gw, tcp, peer).await,
                        Err(e) => log::warn!("cannot adopt a connection: {e}"),
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                log::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

pub fn local_addr(listener: &TcpListener) -> std::io::Result<SocketAddr> {
    listener.local_addr()
}
