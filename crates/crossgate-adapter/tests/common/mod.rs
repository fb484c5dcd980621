//! Serving an adapter on loopback for a test, with a way to stop it.

use crossgate_adapter::{Adapter, ServeError, serve};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A listener on a free loopback port, and its `http://` address.
pub async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}", l.local_addr().unwrap());
    (l, uri)
}

/// An adapter being served.
pub struct Served {
    /// Sent (or dropped): the adapter shuts down; `served` ends then.
    pub stop: Option<oneshot::Sender<()>>,
    pub served: JoinHandle<Result<(), ServeError>>,
    /// Connected to it.
    pub channel: Channel,
}

/// Serve `adapter` (plain HTTP/2) until told to stop, and connect to it.
pub async fn serve_adapter(adapter: Adapter) -> Served {
    let (al, adapter_uri) = listener().await;
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(serve(adapter, al, async move {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(adapter_uri)
        .unwrap()
        .connect()
        .await
        .unwrap();
    Served {
        stop: Some(stop),
        served,
        channel,
    }
}

/// Wait (up to 10 s) until `done` holds.
pub async fn until(what: &str, done: impl Fn() -> bool) {
    let began = std::time::Instant::now();
    while !done() {
        assert!(
            began.elapsed() < std::time::Duration::from_secs(10),
            "not in time: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
