pub mod adapter;
pub mod audit;
pub mod bench;
pub mod broker;
pub mod certs;
pub mod connect;
pub mod deliveries;
pub mod demo;
pub mod limits;
pub mod map;
pub mod policy;
pub mod schema;
pub mod submit;
pub mod up;

/// Until Ctrl-C or SIGTERM: how a running server is asked to stop.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
