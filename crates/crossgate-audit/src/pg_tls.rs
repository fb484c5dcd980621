//! TLS to PostgreSQL with rustls, verifying the server against a CA the
//! operator names — crossgate never sends the log to a server it cannot
//! verify. In the store's URL, as libpq writes it:
//!
//! - `sslmode=disable` (or no sslmode and no sslrootcert): plain TCP, for
//!   a server on loopback or a Unix socket;
//! - `sslmode=require`, `verify-ca` or `verify-full` with
//!   `sslrootcert=PATH` (PEM): TLS, the server's certificate checked
//!   against that CA and the URL's host name (verify-full, whichever of the
//!   three is written); without `sslrootcert` the URL is refused.

use crate::StoreError;
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How to reach the server: the URL for the postgres crate (without the
/// parameters it does not know) and the TLS to use.
pub(crate) enum Connect {
    Plain(String),
    Tls(String, RustlsConnect),
}

/// Read `sslmode` and `sslrootcert` off `url`.
pub(crate) fn connect_for(url: &str) -> Result<Connect, StoreError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let (mut mode, mut root) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslrootcert", v)) => root = Some(percent_decoded(v)),
            Some(("sslmode", v)) => mode = Some(v.to_owned()),
            _ => kept.push(pair),
        }
    }
    let tls = match (mode.as_deref(), &root) {
        (None | Some("disable"), None) => false,
        (None | Some("require" | "verify-ca" | "verify-full"), Some(_)) => true,
        (Some("require" | "verify-ca" | "verify-full"), None) => {
            return Err(StoreError::Failed(
                "sslmode asks for TLS but gives no sslrootcert=PATH: name the CA (PEM) that signed the PostgreSQL server's certificate; crossgate never accepts a server it cannot verify".into(),
            ));
        }
        (Some(other), _) => {
            return Err(StoreError::Failed(format!(
                "sslmode={other}: write disable, or require (with sslrootcert=PATH)"
            )));
        }
    };
    if tls {
        kept.push("sslmode=require");
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    match root {
        Some(path) if tls => Ok(Connect::Tls(url, RustlsConnect::from_ca_file(&path)?)),
        _ => Ok(Connect::Plain(url)),
    }
}

pub(crate) fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A rustls client for the postgres crate.
#[derive(Clone)]
pub struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
}

impl RustlsConnect {
    fn from_ca_file(path: &str) -> Result<Self, StoreError> {
        let bad = |why: String| {
            StoreError::Failed(format!(
                "sslrootcert {path}: {why}; name the PEM file of the CA that signed the PostgreSQL server's certificate"
            ))
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad("it holds no certificate".into()));
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(RustlsConnect {
            config: Arc::new(config),
        })
    }
}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connector;
    type Error = std::io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connector, std::io::Error> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        Ok(Connector {
            config: self.config.clone(),
            name,
        })
    }
}

pub struct Connector {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Stream<S>, std::io::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(Stream(tls))
        })
    }
}

/// The encrypted connection.
pub struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_without_a_verifiable_server_are_refused_and_the_rest_kept() {
        let plain = "postgres://u@h/db?options=-c%20search_path%3Ds";
        assert!(matches!(connect_for(plain), Ok(Connect::Plain(u)) if u == plain));
        assert!(matches!(
            connect_for("postgres://u@h/db?sslmode=disable"),
            Ok(Connect::Plain(u)) if u == "postgres://u@h/db"
        ));
        let Err(StoreError::Failed(why)) = connect_for("postgres://u@h/db?sslmode=require") else {
            panic!("accepted TLS without a CA");
        };
        assert!(why.contains("sslrootcert=PATH"), "{why}");
        let Err(StoreError::Failed(why)) = connect_for("postgres://u@h/db?sslmode=allow") else {
            panic!("accepted sslmode=allow");
        };
        assert!(why.contains("sslmode=allow"), "{why}");
        let Err(StoreError::Failed(why)) =
            connect_for("postgres://u@h/db?sslmode=require&sslrootcert=%2Fnowhere%2Fca.pem")
        else {
            panic!("accepted a missing CA file");
        };
        assert!(why.contains("sslrootcert /nowhere/ca.pem"), "{why}");
        assert_eq!(percent_decoded("%2"), "%2");
    }
}
