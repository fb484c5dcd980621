//! `crossgate broker`: run the broker from a config folder.

use crate::ExitCode;
use crate::cmd::schema::{SchemasDir, load};
use clap::Args;
use crossgate_broker::admin::LimitsAdmin;
use crossgate_broker::delivery::{Adapters, DirectDelivery};
use crossgate_broker::{Broker, BrokerConfig, Parts, Unlimited};
use crossgate_policy::Partner;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Configuration folder (broker.toml, partners.toml, catalog.toml)
    #[arg(long, value_name = "DIR", default_value = "deploy/local")]
    pub config: PathBuf,
    #[command(flatten)]
    pub dir: SchemasDir,
    /// Override broker.toml's listen address
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Override broker.toml's certificate folder
    #[arg(long, value_name = "DIR")]
    pub certs: Option<PathBuf>,
}

pub fn load_partners(config: &Path) -> Result<Vec<Partner>, String> {
    let path = config.join("partners.toml");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    crossgate_policy::compile_partners(&path.display().to_string(), &text)
        .map_err(|e| e.to_string())
}

pub fn run(args: BrokerArgs) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(run_async(args)),
        Err(e) => {
            eprintln!("crossgate: cannot start the async runtime: {e}");
            ExitCode::Usage
        }
    }
}

async fn run_async(args: BrokerArgs) -> ExitCode {
    let fail = |e: String| {
        eprintln!("crossgate: {e}");
        ExitCode::Usage
    };
    let registry = match load(&args.dir) {
        Ok(r) => Arc::new(r),
        Err(code) => return code,
    };
    let mut config = match BrokerConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(c) = args.certs {
        config.certs = c;
    }
    let partners = match load_partners(&args.config) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let policy = match crate::cmd::policy::load_policy(&args.config, &registry) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let ids: Vec<&str> = partners.iter().map(|p| p.id.as_str()).collect();
    let (limiter, admin): (Arc<dyn crossgate_broker::Limiter>, _) =
        match crossgate_broker::config::open_limits(
            &args.config,
            &crossgate_broker::config::overrides_file(&args.config),
            &ids,
        ) {
            Ok(Some(limits)) => (
                limits.clone() as Arc<dyn crossgate_broker::Limiter>,
                Some(LimitsAdmin {
                    limits,
                    config_dir: args.config.clone(),
                    overrides_file: crossgate_broker::config::overrides_file(&args.config),
                }),
            ),
            Ok(None) => (
                Arc::new(Unlimited) as Arc<dyn crossgate_broker::Limiter>,
                None,
            ),
            Err(e) => return fail(e),
        };
    let tls = match crossgate_tls::Bundle::load(&config.certs, "broker") {
        Ok(t) => t,
        Err(e) => return fail(e.to_string()),
    };
    let adapters = match Adapters::new(&partners, Some(tls.client()), Duration::from_secs(2)) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let listener = match TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            return fail(format!(
                "cannot listen on {}: {e}; is another broker running? set listen in broker.toml or --listen",
                config.listen
            ));
        }
    };
    println!(
        "broker listening on https://{} (mutual TLS; certificates in {})",
        config.listen,
        config.certs.display()
    );
    let references = match crossgate_broker::config::load_reference_key(&config.certs) {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    let approval_uses =
        match crossgate_broker::approvals::spent_in_log(&policy, &config.audit.store) {
            Ok(spent) => crossgate_broker::approvals::ApprovalUses::with_spent(spent),
            Err(e) => return fail(format!("cannot count approval uses in the audit log: {e}")),
        };
    let audit_reader = Some(crossgate_broker::audit_service::AuditReader {
        store: config.audit.store.clone(),
    });
    let audit = match config.audit.start() {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    println!(
        "audit log: {} ({}, chain {})",
        config.audit.store, config.audit.durability, config.audit.writer
    );
    let broker = Broker::new(Parts {
        references,
        approval_uses,
        queue: Arc::new(DirectDelivery {
            adapters: adapters.clone(),
            timeout: config.delivery_timeout(),
        }),
        config,
        registry,
        policy,
        partners,
        adapters,
        audit: Arc::new(audit),
        limiter,
        admin,
        audit_reader,
    });
    // SIGHUP re-reads limits.toml; an invalid file is refused and the old limits stay.
    #[cfg(unix)]
    {
        let reloader = broker.clone();
        tokio::spawn(async move {
            let Ok(mut hangups) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hangups.recv().await.is_some() {
                match reloader.reload_limits_file() {
                    Ok(m) => eprintln!("crossgate: {m}"),
                    Err(e) => eprintln!("crossgate: limits not reloaded: {e}"),
                }
            }
        });
    }
    match crossgate_broker::serve(broker, tls, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    {
        Ok(()) => ExitCode::Ok,
        Err(e) => {
            eprintln!("crossgate: broker stopped: {e}");
            ExitCode::Failed
        }
    }
}
