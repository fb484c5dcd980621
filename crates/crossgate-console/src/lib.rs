//! The auditor's console: read-only web pages over the access log.
//!
//! - `/` search: time range, consumer, provider, record type, record id,
//!   purpose, decision; 50 entries a page; the URL carries the filters, so
//!   a link can be shared;
//! - `/entry?writer=W&sequence=N`: every field of one entry, its place in
//!   its chain, its hash and the previous hash;
//! - `/received?record_id=X`: who received record X, when, for what
//!   purpose, under which grant;
//! - `/partners`: per partner, its decisions as consumer and as provider;
//! - `/charts`: accesses per day by consumer and by provider, decisions by
//!   kind, denials and throttles per day (SVG drawn by the server);
//! - `/verify`: every chain checked, with the first bad entry;
//! - `/export.csv`, `/export.jsonl`: the current filter, escaped as
//!   `crossgate audit search` escapes it.
//!
//! Read-only, always: only GET (and HEAD) are answered, and the store is
//! only read. Pages send a strict Content-Security-Policy: no script,
//! nothing from elsewhere. Two ways to serve it:
//! - [`serve`], plain HTTP on loopback for an auditor's workstation; a
//!   request whose `Host` is not a loopback name is refused (a web page
//!   elsewhere cannot reach the console through DNS rebinding);
//! - [`serve_tls`], HTTPS for a network: the client must present a
//!   certificate of the deployment's CA, and `admit` must accept it (an
//!   auditor's); anyone else is answered 403 on every page.
#![forbid(unsafe_code)]

mod charts;
mod pages;
mod query;
mod source;

pub use query::Query;
pub use source::{BrokerLog, Log, StoreLog};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Entries on a search page.
pub const PAGE_SIZE: usize = 50;

/// What the console reads.
#[derive(Clone, Debug)]
pub enum Source {
    /// An audit store (`sqlite:…` or `postgres://…`), read directly.
    Store(String),
    /// The broker's Audit service, as an auditor: the broker writes each
    /// reading to the log.
    Broker(crossgate_proto::audit_client::AuditClient<tonic::transport::Channel>),
}

/// The console over its source.
#[derive(Clone)]
pub struct Console {
    pub source: Source,
    /// The runtime a broker source is called on (pages are built on
    /// blocking threads).
    pub runtime: Option<tokio::runtime::Handle>,
    /// Over a store: each page view is written to the log, as the broker
    /// writes each reading through its Audit service (a chain of the
    /// console's own). A view that cannot be written is not shown.
    pub readings: Option<crossgate_audit::Writer>,
    /// Over a store: the key of the log's record-id digests, with which a
    /// search by record id finds the entries naming it.
    pub record_ids: Option<crossgate_audit::RecordIdKey>,
    /// Pages being built at once, at most [`PAGES_AT_ONCE`].
    building: Arc<tokio::sync::Semaphore>,
    /// Numbers the readings' request ids.
    views: Arc<std::sync::atomic::AtomicU64>,
}

/// Pages built at once; more wait their turn.
pub const PAGES_AT_ONCE: usize = 4;

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("source", &self.source)
            .field("audits_readings", &self.readings.is_some())
            .finish()
    }
}

/// A page view's query string as its entry keeps it: a record id searched
/// for is written as its digest (the log holds no record's id), or, with no
/// key to digest it, left out; every other parameter as given.
fn reading_query(query: &str, ids: Option<&crossgate_audit::RecordIdKey>) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        // As the page reads it (`Query::parse`), so that the digest kept
        // is the one searched for.
        let read = query::Query::parse_value(&v);
        if k == "record_id" && !read.is_empty() && !crossgate_audit::is_record_id_digest(&read) {
            match ids {
                Some(ids) => out.append_pair(&k, &ids.digest(&read)),
                None => out.append_pair(&k, "(not kept: no key to digest it)"),
            };
        } else {
            out.append_pair(&k, &v);
        }
    }
    out.finish()
}

/// The longest description of a reading kept in its entry.
const MAX_READING: usize = 512;

impl Console {
    /// Over a store.
    pub fn over_store(store: impl Into<String>) -> Console {
        Console {
            source: Source::Store(store.into()),
            runtime: None,
            readings: None,
            record_ids: None,
            building: Arc::new(tokio::sync::Semaphore::new(PAGES_AT_ONCE)),
            views: Arc::default(),
        }
    }

    /// Write each page view to the log with `writer` (a chain of its own).
    pub fn auditing_readings(mut self, writer: crossgate_audit::Writer) -> Console {
        self.readings = Some(writer);
        self
    }

    /// Search record ids by their digests under `key` (over a store; the
    /// broker digests them itself).
    pub fn with_record_id_key(mut self, key: crossgate_audit::RecordIdKey) -> Console {
        self.record_ids = Some(key);
        self
    }

    /// Over the broker's Audit service; call inside the runtime.
    pub fn over_broker(
        client: crossgate_proto::audit_client::AuditClient<tonic::transport::Channel>,
    ) -> Console {
        Console {
            source: Source::Broker(client),
            runtime: Some(tokio::runtime::Handle::current()),
            readings: None,
            record_ids: None,
            building: Arc::new(tokio::sync::Semaphore::new(PAGES_AT_ONCE)),
            views: Arc::default(),
        }
    }

    fn open(&self) -> Result<Box<dyn Log>, String> {
        match &self.source {
            Source::Store(store) => crossgate_audit::open(store)
                .map(|store| {
                    Box::new(StoreLog {
                        store,
                        ids: self.record_ids.clone(),
                    }) as Box<dyn Log>
                })
                .map_err(|e| format!("the audit log cannot be opened: {e}")),
            Source::Broker(client) => match &self.runtime {
                Some(runtime) => Ok(Box::new(BrokerLog {
                    client: client.clone(),
                    runtime: runtime.clone(),
                })),
                None => Err("the console has no runtime to call the broker on".into()),
            },
        }
    }
}

/// An answer: status, content type, body and, for a download, its file name.
pub struct Page {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
    pub download: Option<&'static str>,
}

impl Page {
    fn html(status: StatusCode, body: String) -> Page {
        Page {
            status,
            content_type: "text/html; charset=utf-8",
            body,
            download: None,
        }
    }
}

impl Console {
    /// The page for `path` and its query string; reads the store on this
    /// thread (call off the async runtime).
    pub fn page(&self, path: &str, query: &str) -> Page {
        let q = Query::parse(query);
        let mut log = match self.open() {
            Ok(log) => log,
            Err(e) => return Page::html(StatusCode::SERVICE_UNAVAILABLE, pages::problem(&e)),
        };
        let store = log.as_mut();
        let answer = match path {
            "/" => pages::search(store, &q).map(|b| Page::html(StatusCode::OK, b)),
            "/entry" => pages::entry(store, &q).map(|b| match b {
                Some(b) => Page::html(StatusCode::OK, b),
                None => Page::html(
                    StatusCode::NOT_FOUND,
                    pages::problem("no such entry: follow a link from the search page"),
                ),
            }),
            "/received" => pages::received(store, &q).map(|b| Page::html(StatusCode::OK, b)),
            "/partners" => pages::partners(store, &q).map(|b| Page::html(StatusCode::OK, b)),
            "/charts" => pages::charts(store, &q).map(|b| Page::html(StatusCode::OK, b)),
            "/verify" => pages::verify(store).map(|b| Page::html(StatusCode::OK, b)),
            "/export.csv" => pages::export_csv(store, &q).map(|body| Page {
                status: StatusCode::OK,
                content_type: "text/csv; charset=utf-8",
                body,
                download: Some("crossgate-audit.csv"),
            }),
            "/export.jsonl" => pages::export_jsonl(store, &q).map(|body| Page {
                status: StatusCode::OK,
                content_type: "application/jsonl; charset=utf-8",
                body,
                download: Some("crossgate-audit.jsonl"),
            }),
            _ => Ok(Page::html(
                StatusCode::NOT_FOUND,
                pages::problem("no such page"),
            )),
        };
        answer.unwrap_or_else(|e| {
            // A damaged row is a finding for verify, not a server fault.
            let status = match e {
                crossgate_audit::StoreError::Damaged { .. } => StatusCode::CONFLICT,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            Page::html(
                status,
                pages::problem(&format!(
                    "the audit log could not be read: {e}; the verify page checks every chain"
                )),
            )
        })
    }
}

/// Why a request came from another site's page, if it did: a browser
/// says so in `Sec-Fetch-Site` (and `Origin`). Another page must not make
/// an auditor's browser read the log (each view is an entry in the log, an
/// export a scan of it) with the auditor's certificate.
fn cross_site(request: &Request<hyper::body::Incoming>) -> Option<&'static str> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(site) = header("sec-fetch-site")
        && site != "same-origin"
        && site != "none"
    {
        return Some(
            "the console answers its own pages and typed addresses, not other sites' pages",
        );
    }
    if let Some(origin) = header("origin") {
        let host = header("host").unwrap_or_default();
        let origin_host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .unwrap_or_default();
        if origin_host != host {
            return Some("the console answers requests from its own pages only");
        }
    }
    None
}

/// Whether `host` (a `Host` header) names this machine's loopback.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [::1]:port
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    matches!(name, "localhost" | "127.0.0.1" | "::1")
}

fn respond(page: Page) -> Response<Full<Bytes>> {
    let mut response = Response::builder()
        .status(page.status)
        .header("content-type", page.content_type)
        .header(
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        )
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header("cache-control", "no-store");
    if let Some(name) = page.download {
        response = response.header(
            "content-disposition",
            format!("attachment; filename=\"{name}\""),
        );
    }
    response
        .body(Full::new(Bytes::from(page.body)))
        .unwrap_or_default()
}

/// Who may read, decided per connection.
#[derive(Clone, Debug)]
enum Gate {
    /// Plain HTTP on loopback: the `Host` must name loopback.
    Loopback,
    /// HTTPS: the client certificate's party, admitted.
    Admitted(Arc<str>),
    /// HTTPS: refused, and why.
    Refused(Arc<str>),
}

/// Decides from a client's verified certificate chain who it is (`Ok`, an
/// auditor) or why it may not read (`Err`).
pub type Admit = Arc<
    dyn Fn(&[tokio_rustls::rustls::pki_types::CertificateDer<'_>]) -> Result<String, String>
        + Send
        + Sync,
>;

async fn answer(
    console: Arc<Console>,
    gate: Gate,
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    match &gate {
        Gate::Loopback => {
            let host = request
                .headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default();
            if !loopback_host(host) {
                return respond(Page::html(
                    StatusCode::MISDIRECTED_REQUEST,
                    pages::problem(
                        "the console answers only on this machine's loopback (localhost)",
                    ),
                ));
            }
        }
        Gate::Refused(why) => {
            return respond(Page::html(
                StatusCode::FORBIDDEN,
                pages::problem(&format!("the console is for auditors: {why}")),
            ));
        }
        Gate::Admitted(_) => {}
    }
    if let Some(why) = cross_site(&request) {
        return respond(Page::html(StatusCode::FORBIDDEN, pages::problem(why)));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut r = respond(Page::html(
            StatusCode::METHOD_NOT_ALLOWED,
            pages::problem("the console is read-only"),
        ));
        r.headers_mut().insert(
            "allow",
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let reader = match &gate {
        Gate::Admitted(who) => who.to_string(),
        _ => "console@loopback".to_owned(),
    };
    if let Some(readings) = &console.readings {
        let mut what: String = format!(
            "console {path}?{}",
            reading_query(&query, console.record_ids.as_ref())
        )
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_READING)
        .collect();
        what.shrink_to_fit();
        let mut e = crossgate_audit::Entry {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            request_id: String::new(),
            kind: crossgate_audit::Kind::Audit,
            consumer: reader.clone(),
            provider: String::new(),
            record_type: String::new(),
            record_id: String::new(),
            purpose: String::new(),
            approval_reference: String::new(),
            decision: crossgate_audit::Decision::Allowed,
            reason: what,
            released_fields: Vec::new(),
            record_digest: String::new(),
            latency_micros: 0,
        };
        let n = console
            .views
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        e.request_id = format!("console-{}-{n}", e.time);
        if let Err(e) = readings.append(e).await {
            tracing::error!(error = %e, "a page view could not be written to the log");
            return respond(Page::html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::problem(
                    "this reading cannot be written to the audit log, so the page is not shown; try again later",
                ),
            ));
        }
    }
    let started = std::time::Instant::now();
    // A few pages built at once: each may scan the whole log.
    let Ok(_building) = console.building.clone().acquire_owned().await else {
        return respond(Page::html(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::problem("the console is stopping"),
        ));
    };
    let page = tokio::task::spawn_blocking(move || console.page(&path, &query)).await;
    let page = page.unwrap_or_else(|_| {
        Page::html(
            StatusCode::INTERNAL_SERVER_ERROR,
            pages::problem("the page failed inside the console"),
        )
    });
    tracing::info!(
        reader = %reader,
        path = %request.uri().path(),
        status = page.status.as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "page viewed"
    );
    respond(page)
}

/// Serve the console in plain HTTP on `listener` (a loopback address)
/// until `shutdown`.
pub async fn serve(listener: TcpListener, console: Console, shutdown: impl Future<Output = ()>) {
    serving(listener, console, None, shutdown).await
}

/// Serve the console over HTTPS on `listener` until `shutdown`: `tls`
/// requires a client certificate of the CA, `admit` names the auditor.
pub async fn serve_tls(
    listener: TcpListener,
    console: Console,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    admit: Admit,
    shutdown: impl Future<Output = ()>,
) {
    serving(listener, console, Some((tls, admit)), shutdown).await
}

async fn serving(
    listener: TcpListener,
    console: Console,
    tls: Option<(Arc<tokio_rustls::rustls::ServerConfig>, Admit)>,
    shutdown: impl Future<Output = ()>,
) {
    let console = Arc::new(console);
    let tls = tls.map(|(config, admit)| (tokio_rustls::TlsAcceptor::from(config), admit));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "the console could not accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let console = console.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10));
            let service = |gate: Gate| {
                hyper::service::service_fn(move |request| {
                    let console = console.clone();
                    let gate = gate.clone();
                    async move { Ok::<_, Infallible>(answer(console, gate, request).await) }
                })
            };
            let limit = std::time::Duration::from_secs(120);
            match tls {
                Some((acceptor, admit)) => {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    );
                    // No certificate of the CA, or no handshake in time:
                    // nothing is served.
                    let Ok(Ok(stream)) = handshake.await else {
                        return;
                    };
                    let gate =
                        match admit(stream.get_ref().1.peer_certificates().unwrap_or_default()) {
                            Ok(who) => Gate::Admitted(who.into()),
                            Err(why) => Gate::Refused(why.into()),
                        };
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ =
                        tokio::time::timeout(limit, builder.serve_connection(io, service(gate)))
                            .await;
                }
                None => {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = tokio::time::timeout(
                        limit,
                        builder.serve_connection(io, service(Gate::Loopback)),
                    )
                    .await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests;
