//! The proxy listener: accepts connections and gives each its own session task.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::gateway::Gateway;
use super::session;

/// Bind the configured address (so errors reach the caller before anything runs).
pub async fn bind(gw: &Gateway) -> std::io::Result<TcpListener> {
    TcpListener::bind(&gw.config.listen).await
}

pub async fn serve(gw: Arc<Gateway>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let gw = Arc::clone(&gw);
                tokio::spawn(async move { session::run(gw, tcp, peer).await });
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
