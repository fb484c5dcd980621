//! The whole system on one machine, in one process: the broker, an adapter
//! for each department, and each department's reference system seeded from
//! the shipped fixtures — all on loopback, all over mutual TLS. Used by tests,
//! benchmarks and the one-command local setup.
#![forbid(unsafe_code)]

use crossgate_adapter::seen::Seen;
use crossgate_adapter::system::ReferenceSystem;
use crossgate_adapter::{Adapter, Peers, lazy_channel, lazy_tls_channel, serve_system};
use crossgate_broker::audit::{AuditSink, MemorySink};
use crossgate_broker::config::AuditConfig;
use crossgate_broker::deployment::{AuditChoice, Deployment, Wiring};
use crossgate_broker::{Broker, Limiter};
use crossgate_policy::{Partner, ReferenceKey, Role};
use crossgate_schema::Registry;
use crossgate_tls::{Bundle, DevCa};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What to start.
pub struct Options {
    /// Config folder: broker.toml, partners.toml, catalog.toml, departments/, fixtures/.
    pub config: PathBuf,
    /// Schema folder.
    pub schemas: PathBuf,
    /// Certificates: `None` makes a fresh in-memory CA for this run.
    pub certs: Option<PathBuf>,
    /// Listen on free ports instead of the configured ones.
    pub ephemeral_ports: bool,
    /// Departments whose adapters to start (`None`: every partner).
    pub departments: Option<Vec<String>>,
    pub audit: Option<Arc<dyn AuditSink>>,
    /// A durable audit log (e.g. `sqlite:PATH`) instead of an in-memory one;
    /// the `Audit` service then reads it.
    pub audit_store: Option<String>,
    pub limiter: Option<Arc<dyn Limiter>>,
    /// Where operators' limit changes are kept [default: beside the config].
    pub state_dir: Option<PathBuf>,
    /// Where each adapter keeps the delivery ids it passed on
    /// (`<dept>.delivered.db`) [default: in memory].
    pub adapter_state: Option<PathBuf>,
}

impl Options {
    /// The project's own `deploy/local` and `schemas`, free ports, a fresh CA.
    pub fn project_defaults() -> Self {
        let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
        Options {
            config: root.join("deploy/local"),
            schemas: root.join("schemas"),
            certs: None,
            ephemeral_ports: true,
            departments: None,
            audit: None,
            audit_store: None,
            limiter: None,
            state_dir: None,
            adapter_state: None,
        }
    }
}

/// Why the local system could not start; each keeps its source.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Schemas(#[from] crossgate_schema::LoadError),
    #[error(transparent)]
    Broker(#[from] crossgate_broker::error::BrokerError),
    #[error(transparent)]
    Tls(#[from] crossgate_tls::TlsError),
    #[error(transparent)]
    Mapping(#[from] crossgate_adapter::config::LoadError),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot listen on {addr}: {source}; is another crossgate running?")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot seed {dept}'s reference system from {path}: {source}")]
    Seed {
        dept: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// A running local system. Dropping it (or [`LocalSystem::shutdown`]) stops
/// every server gracefully.
pub struct LocalSystem {
    pub broker_addr: String,
    pub adapter_addrs: HashMap<String, String>,
    pub systems: HashMap<String, ReferenceSystem>,
    pub partners: Vec<Partner>,
    pub memory_audit: Option<Arc<MemorySink>>,
    /// The key of the log's record-id digests (the broker's own).
    pub record_ids: crossgate_audit::RecordIdKey,
    certs: CertSource,
    stop: watch::Sender<bool>,
    departments: Departments,
    /// The ports of departments not started, held until they are.
    reserved: HashMap<String, tokio::net::TcpSocket>,
    broker_task: std::sync::Mutex<Option<BrokerTask>>,
}

type BrokerTask = tokio::task::JoinHandle<Result<(), crossgate_broker::ServeError>>;

/// What it takes to start a department (its reference system and adapter).
struct Departments {
    config: PathBuf,
    registry: Arc<Registry>,
    certs: CertSource,
    broker_addr: String,
    adapter_state: Option<PathBuf>,
    stopped: watch::Receiver<bool>,
    /// broker.toml's `crls`, checked by each adapter too.
    revocation: Option<Arc<crossgate_tls::revocation::Revocation>>,
    /// One set of metrics for the broker and the adapters of this process.
    metrics: Arc<crossgate_metrics::Metrics>,
}

impl Departments {
    /// The department's reference system (seeded from its fixtures) and its
    /// adapter on `listener` (bound before any port is picked at random, so
    /// that no random port takes a configured one); returns the system and
    /// the adapter's address.
    async fn start(
        &self,
        dept: &str,
        listener: (TcpListener, String),
    ) -> Result<(ReferenceSystem, String), StartError> {
        let shutdown = || {
            let mut rx = self.stopped.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let system = ReferenceSystem::new();
        let seeds = self.config.join("fixtures").join(dept);
        if seeds.is_dir() {
            system.seed_dir(&seeds).map_err(|source| StartError::Seed {
                dept: dept.to_owned(),
                path: seeds.clone(),
                source,
            })?;
        }
        let (sl, saddr) = bind("127.0.0.1:0").await?;
        tokio::spawn(serve_system(system.clone(), sl, shutdown()));
        let mapping =
            crossgate_adapter::config::load_department(&self.config, dept, &self.registry)?;
        let tls = self.certs.bundle(dept)?;
        let broker_channel = lazy_tls_channel(
            &format!("https://{}", self.broker_addr),
            Some(tls.client_for("broker")),
        )?;
        let system_channel = lazy_channel(&format!("http://{saddr}"))?;
        let mut adapter = Adapter::new(
            mapping,
            self.registry.clone(),
            broker_channel,
            system_channel,
        )
        .with_peers(Peers::new("broker", self.revocation.clone()));
        if let Some(state) = &self.adapter_state {
            let seen = Seen::open(
                &state.join(format!("{dept}.delivered.db")),
                crossgate_adapter::seen::DEFAULT_CAPACITY,
            )
            .map_err(|e| StartError::Other(e.to_string()))?;
            adapter = adapter.with_seen(seen);
        }
        let (al, aaddr) = listener;
        tokio::spawn(crossgate_adapter::serve_counted(
            adapter,
            al,
            Some(tls.server()),
            shutdown(),
            Some(self.metrics.clone()),
        ));
        Ok((system, aaddr))
    }
}

#[derive(Clone)]
enum CertSource {
    Dir(PathBuf),
    Memory(Arc<DevCa>),
}

impl CertSource {
    fn bundle(&self, id: &str) -> Result<Bundle, StartError> {
        match self {
            CertSource::Dir(dir) => Ok(Bundle::load(dir, id)?),
            CertSource::Memory(ca) => {
                let (cert_pem, key_pem) = ca.issue(id, 1, 30)?;
                Ok(Bundle {
                    cert_pem,
                    key_pem,
                    ca_pem: ca.pem().to_owned(),
                })
            }
        }
    }
}

/// A loopback port bound but not listening: connections to it are refused.
fn reserve() -> Result<(tokio::net::TcpSocket, String), StartError> {
    let fail = |source| StartError::Bind {
        addr: "127.0.0.1:0".into(),
        source,
    };
    let socket = tokio::net::TcpSocket::new_v4().map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(fail)?;
    let addr = socket.local_addr().map_err(fail)?.to_string();
    Ok((socket, addr))
}

async fn bind(addr: &str) -> Result<(TcpListener, String), StartError> {
    let bind_error = |source| StartError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let l = TcpListener::bind(addr).await.map_err(bind_error)?;
    let a = l.local_addr().map_err(bind_error)?.to_string();
    Ok((l, a))
}

impl LocalSystem {
    pub async fn start(opts: Options) -> Result<Self, StartError> {
        let registry = Arc::new(Registry::load_dir(&opts.schemas)?);
        let mut dep = Deployment::load(&opts.config, registry.clone())?;
        let overrides_file = match &opts.state_dir {
            Some(state) => state.join("limits.overrides.toml"),
            None => crossgate_broker::config::overrides_file(&opts.config),
        };
        let certs = match &opts.certs {
            Some(dir) => CertSource::Dir(dir.clone()),
            None => CertSource::Memory(Arc::new(DevCa::new("crossgate local CA")?)),
        };
        let port = |configured: &str| {
            if opts.ephemeral_ports {
                "127.0.0.1:0".to_owned()
            } else {
                configured.to_owned()
            }
        };
        let (broker_listener, broker_addr) = bind(&port(&dep.config.listen.to_string())).await?;
        let (stop, stopped) = watch::channel(false);
        let shutdown = move || {
            let mut rx = stopped.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };

        let mut systems = HashMap::new();
        let mut adapter_addrs = HashMap::new();
        let wanted = |id: &str| {
            opts.departments
                .as_ref()
                .is_none_or(|d| d.iter().any(|x| x == id))
        };
        let metrics = crossgate_metrics::Metrics::new(
            dep.partners.iter().map(|p| p.id.clone()),
            registry.record_types().map(|t| t.record_type.to_owned()),
        );
        let departments = Departments {
            metrics: metrics.clone(),
            config: opts.config.clone(),
            registry: registry.clone(),
            certs: certs.clone(),
            broker_addr: broker_addr.clone(),
            adapter_state: opts.adapter_state.clone(),
            stopped: stop.subscribe(),
            revocation: crossgate_tls::revocation::Revocation::load(
                &certs.bundle("broker")?.ca_pem,
                &dep.config.crls,
            )?
            .map(Arc::new),
        };
        // Every configured adapter port first: a reference system's random
        // port must not be one of them.
        let mut listeners = HashMap::new();
        for partner in dep.partners.iter().filter(|p| p.role == Role::Partner) {
            if let Some(configured) = &partner.adapter
                && wanted(&partner.id)
            {
                listeners.insert(partner.id.clone(), bind(&port(configured)).await?);
            }
        }
        let mut reserved = HashMap::new();
        for partner in dep.partners.iter_mut().filter(|p| p.role == Role::Partner) {
            let Some(configured) = partner.adapter.clone() else {
                continue;
            };
            if !wanted(&partner.id) {
                // Not started: a port that is bound (so no one else takes it)
                // but not listening (so a delivery there is refused at once).
                let (socket, a) = reserve()?;
                reserved.insert(partner.id.clone(), socket);
                partner.adapter = Some(a);
                continue;
            }
            let dept = partner.id.clone();
            let listener = match listeners.remove(&dept) {
                Some(l) => l,
                None => bind(&port(&configured)).await?,
            };
            let (system, aaddr) = departments.start(&dept, listener).await?;
            partner.adapter = Some(aaddr.clone());
            systems.insert(dept.clone(), system);
            adapter_addrs.insert(dept, aaddr);
        }

        let broker_tls = certs.bundle("broker")?;
        dep.config.listen = broker_addr
            .parse()
            .map_err(|e| StartError::Other(format!("bound address {broker_addr}: {e}")))?;
        // References outlive a run only when the certificates do.
        let (references, checkpoints) = match &certs {
            CertSource::Dir(dir) => {
                crossgate_tls::ensure_reference_secret(dir)?;
                (
                    crossgate_broker::config::load_reference_key(dir)?,
                    crossgate_broker::config::load_checkpoint_signer(dir)?,
                )
            }
            CertSource::Memory(_) => (
                ReferenceKey::random().map_err(|_| {
                    StartError::Other("cannot make a record-reference secret".into())
                })?,
                Arc::new(
                    crossgate_audit::checkpoint::Signer::generate("broker").map_err(|_| {
                        StartError::Other("cannot make a checkpoint signing key".into())
                    })?,
                ),
            ),
        };
        let memory = Arc::new(MemorySink::default());
        let (audit, memory_audit) = match (opts.audit, &opts.audit_store) {
            (Some(sink), _) => (AuditChoice::Sink(sink), None),
            // broker.toml's [audit], on the store asked for.
            (None, Some(spec)) => (
                AuditChoice::Store(AuditConfig {
                    store: spec.clone(),
                    ..dep.config.audit.clone()
                }),
                None,
            ),
            (None, None) => (AuditChoice::Sink(memory.clone()), Some(memory)),
        };
        let partners = dep.partners.clone();
        let record_ids = crossgate_broker::config::record_id_key(&references);
        let broker = Broker::from_deployment(
            dep,
            Wiring {
                tls: broker_tls.clone(),
                references,
                checkpoints: Some(checkpoints),
                audit,
                overrides_file,
                limiter: opts.limiter,
                metrics: Some(metrics),
            },
        )?;
        let broker_task = tokio::spawn(crossgate_broker::serve(
            broker,
            broker_tls,
            broker_listener,
            shutdown(),
        ));
        Ok(LocalSystem {
            broker_addr,
            adapter_addrs,
            systems,
            partners,
            memory_audit,
            record_ids,
            certs,
            stop,
            departments,
            reserved,
            broker_task: std::sync::Mutex::new(Some(broker_task)),
        })
    }

    /// The certificate bundle of a party (from the certificate folder, or
    /// freshly issued by this run's CA).
    pub fn bundle(&self, id: &str) -> Result<Bundle, StartError> {
        self.certs.bundle(id)
    }

    /// The certificate folder, when certificates come from files.
    pub fn certs_dir(&self) -> Option<&Path> {
        match &self.certs {
            CertSource::Dir(d) => Some(d),
            CertSource::Memory(_) => None,
        }
    }

    /// A mutual-TLS channel to `addr` as party `id`.
    pub async fn channel(
        &self,
        addr: &str,
        id: &str,
    ) -> Result<tonic::transport::Channel, StartError> {
        Ok(
            tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
                .connect_timeout(Duration::from_secs(2))
                .tls_config(self.bundle(id)?.client())?
                .connect()
                .await?,
        )
    }

    /// Stop every server: in-flight calls finish, new ones are refused.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Start a department that was left down, on the address the broker
    /// already knows for it (a receiver coming back).
    pub async fn start_department(&mut self, dept: &str) -> Result<ReferenceSystem, StartError> {
        let addr = self
            .partners
            .iter()
            .find(|p| p.id == dept)
            .and_then(|p| p.adapter.clone())
            .ok_or_else(|| StartError::Other(format!("{dept} has no adapter address")))?;
        // Let go of the port just before the adapter takes it.
        drop(self.reserved.remove(dept));
        let listener = bind(&addr).await?;
        let (system, addr) = self.departments.start(dept, listener).await?;
        self.systems.insert(dept.to_owned(), system.clone());
        self.adapter_addrs.insert(dept.to_owned(), addr);
        Ok(system)
    }

    /// Stop, and wait until the broker has drained (within its grace period).
    pub async fn stop(&self) {
        self.shutdown();
        let task = self
            .broker_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// The in-memory CA of this run, for tests that need to issue odd certificates.
    pub fn dev_ca(&self) -> Option<&DevCa> {
        match &self.certs {
            CertSource::Memory(ca) => Some(ca),
            CertSource::Dir(_) => None,
        }
    }
}

impl Drop for LocalSystem {
    fn drop(&mut self) {
        self.shutdown();
    }
}
