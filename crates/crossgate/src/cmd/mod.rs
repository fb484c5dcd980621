pub mod adapter;
pub mod audit;
pub mod bench;
pub mod broker;
pub mod certs;
pub mod connect;
pub mod console;
pub mod deliveries;
pub mod demo;
pub mod limits;
pub mod map;
pub mod policy;
pub mod schema;
pub mod submit;
pub mod top;
pub mod up;

/// Until Ctrl-C or SIGTERM: how a running server is asked to stop.
///
/// SIGTERM is registered when this is called, not when the future is first
/// polled: call it before opening a port, so a signal sent as soon as the
/// port answers is never missed (and never kills the process instead).
pub fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
