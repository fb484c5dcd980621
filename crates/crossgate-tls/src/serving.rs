//! Serving mutual TLS within limits, so that peers who never finish a
//! handshake, or open connections without end, cannot starve the others:
//! a handshake timeout, total and per-address connection caps (a connection
//! over a cap is closed at once), HTTP/2 stream and per-connection
//! concurrency limits, a request timeout and keepalives. Set in broker.toml's
//! `[server]`; the defaults are documented in deploy/README.md.

use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Server, ServerTlsConfig};

/// `[server]` of broker.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerLimits {
    /// A TLS handshake not finished in this time is dropped.
    #[serde(default = "handshake", with = "crossgate_config::duration")]
    pub handshake_timeout: Duration,
    /// Open connections at most; more are closed at once.
    #[serde(default = "connections")]
    pub max_connections: usize,
    /// Open connections from one address at most.
    #[serde(default = "per_address")]
    pub max_connections_per_address: usize,
    /// HTTP/2 streams at once on one connection.
    #[serde(default = "streams")]
    pub max_concurrent_streams: u32,
    /// Requests served at once on one connection (the rest wait).
    #[serde(default = "per_connection")]
    pub concurrency_per_connection: usize,
    /// A request not answered in this time is ended with DEADLINE_EXCEEDED.
    #[serde(default = "request", with = "crossgate_config::duration")]
    pub request_timeout: Duration,
    /// HTTP/2 pings on idle connections, and how long an answer may take.
    #[serde(default = "keepalive", with = "crossgate_config::duration")]
    pub keepalive_interval: Duration,
    #[serde(default = "keepalive_wait", with = "crossgate_config::duration")]
    pub keepalive_timeout: Duration,
}

fn handshake() -> Duration {
    Duration::from_secs(10)
}
fn connections() -> usize {
    4096
}
fn per_address() -> usize {
    512
}
fn streams() -> u32 {
    256
}
fn per_connection() -> usize {
    256
}
fn request() -> Duration {
    Duration::from_secs(60)
}
fn keepalive() -> Duration {
    Duration::from_secs(30)
}
fn keepalive_wait() -> Duration {
    Duration::from_secs(10)
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            handshake_timeout: handshake(),
            max_connections: connections(),
            max_connections_per_address: per_address(),
            max_concurrent_streams: streams(),
            concurrency_per_connection: per_connection(),
            request_timeout: request(),
            keepalive_interval: keepalive(),
            keepalive_timeout: keepalive_wait(),
        }
    }
}

impl ServerLimits {
    /// A server builder with these limits.
    pub fn builder(&self) -> Server {
        Server::builder()
            .max_concurrent_streams(self.max_concurrent_streams.max(1))
            .concurrency_limit_per_connection(self.concurrency_per_connection.max(1))
            .timeout(self.request_timeout)
            .http2_keepalive_interval(Some(self.keepalive_interval))
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
            .tcp_nodelay(true)
    }

    /// `tls` with the handshake timeout.
    pub fn tls(&self, tls: ServerTlsConfig) -> ServerTlsConfig {
        tls.timeout(self.handshake_timeout)
    }

    /// The connections `listener` accepts, within the caps: one over a cap
    /// is closed at once, before any TLS work.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl tokio_stream::Stream<Item = std::io::Result<Capped>> + Send + 'static {
        let caps = Arc::new(Caps {
            total: self.max_connections.max(1),
            per_address: self.max_connections_per_address.max(1),
            open: Mutex::new(Open::default()),
        });
        futures_util::stream::unfold((listener, caps), |(listener, caps)| async move {
            loop {
                match listener.accept().await {
                    Ok((stream, addr)) => {
                        if let Some(permit) = caps.admit(addr.ip()) {
                            let _ = stream.set_nodelay(true);
                            return Some((
                                Ok(Capped {
                                    stream,
                                    _permit: permit,
                                }),
                                (listener, caps),
                            ));
                        }
                        // Over a cap: closed at once.
                        drop(stream);
                    }
                    // Out of descriptors and the like: wait a little, go on.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
    }
}

#[derive(Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

struct Caps {
    total: usize,
    per_address: usize,
    open: Mutex<Open>,
}

impl Caps {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let here = open.by_address.get(&ip).copied().unwrap_or(0);
        if open.total >= self.total || here >= self.per_address {
            return None;
        }
        open.total += 1;
        open.by_address.insert(ip, here + 1);
        Some(Permit {
            caps: self.clone(),
            ip,
        })
    }
}

/// A connection's place under the caps, given back when it closes.
struct Permit {
    caps: Arc<Caps>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&self.ip);
            }
        }
    }
}

/// An accepted connection within the caps.
pub struct Capped {
    stream: TcpStream,
    _permit: Permit,
}

impl Connected for Capped {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caps_count_connections_per_address_and_in_total() {
        let caps = Arc::new(Caps {
            total: 3,
            per_address: 2,
            open: Mutex::new(Open::default()),
        });
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let one = caps.admit(a).unwrap();
        let _two = caps.admit(a).unwrap();
        assert!(caps.admit(a).is_none(), "a third from one address");
        let _three = caps.admit(b).unwrap();
        assert!(caps.admit(b).is_none(), "over the total");
        drop(one);
        assert!(
            caps.admit(a).is_some(),
            "a closed connection gives its place back"
        );
    }
}
