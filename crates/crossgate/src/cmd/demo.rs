//! `crossgate demo`: the whole system in one process, and the scenarios
//! played by real gRPC clients, each step printed with who, what, the
//! outcome and which fields crossed. Exit 0 only if every step behaved.

use crate::{CliResult, ExitCode};
use clap::Args;
use crossgate_local::{LocalSystem, Options};
use crossgate_proto::admin_client::AdminClient;
use crossgate_proto::audit_client::AuditClient;
use crossgate_proto::broker_client::BrokerClient;
use crossgate_proto::ingress_client::IngressClient;
use crossgate_proto::*;
use std::path::PathBuf;
use tonic::Code;
use tonic_types::StatusExt;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Configuration folder
    #[arg(long, value_name = "DIR", default_value = "deploy/local")]
    pub config: PathBuf,
    /// Where this run keeps its state, such as the operator's limit change (emptied first).
    /// The audit log is broker.toml's `[audit] store`.
    #[arg(long, value_name = "DIR", default_value = ".crossgate/demo")]
    pub state: PathBuf,
    /// Play the scenarios against the `crossgate up` already running from
    /// --config (its broker, adapters and certificates) instead of
    /// starting one in this process
    #[arg(long)]
    pub running: bool,
}

/// Where the scenarios are played: a system started in this process, or a
/// `crossgate up` already running from the same config folder.
enum Target {
    Local(Box<LocalSystem>),
    Running {
        broker_addr: String,
        adapter_addrs: std::collections::HashMap<String, String>,
        certs: PathBuf,
    },
}

impl Target {
    /// The running system's addresses and certificates, from --config.
    fn running(config: &std::path::Path) -> Result<Target, crate::CliError> {
        let broker = crossgate_broker::BrokerConfig::load(config)?;
        let partners = crossgate_broker::deployment::read_partners(config)?;
        let certs = broker.certs.clone();
        if !certs.join("ca.pem").exists() {
            return Err(format!(
                "no certificates in {}: start `crossgate up --config {}` first, or leave out --running",
                certs.display(),
                config.display()
            )
            .into());
        }
        Ok(Target::Running {
            broker_addr: broker.listen.to_string(),
            adapter_addrs: partners
                .into_iter()
                .filter_map(|p| Some((p.id, p.adapter?)))
                .collect(),
            certs,
        })
    }

    fn broker_addr(&self) -> &str {
        match self {
            Target::Local(sys) => &sys.broker_addr,
            Target::Running { broker_addr, .. } => broker_addr,
        }
    }

    fn adapter_addr(&self, dept: &str) -> Option<&String> {
        match self {
            Target::Local(sys) => sys.adapter_addrs.get(dept),
            Target::Running { adapter_addrs, .. } => adapter_addrs.get(dept),
        }
    }

    /// A mutual-TLS channel to `addr` as party `id`.
    async fn channel(&self, addr: &str, id: &str) -> Result<tonic::transport::Channel, String> {
        match self {
            Target::Local(sys) => sys.channel(addr, id).await.map_err(|e| e.to_string()),
            Target::Running { certs, .. } => {
                let bundle = crossgate_tls::Bundle::load(certs, id).map_err(|e| e.to_string())?;
                let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
                    .map_err(|e| e.to_string())?
                    .connect_timeout(std::time::Duration::from_secs(2))
                    .tls_config(bundle.client())
                    .map_err(|e| e.to_string())?;
                endpoint
                    .connect()
                    .await
                    .map_err(|e| format!("cannot reach {addr} (is `crossgate up` running?): {e}"))
            }
        }
    }

    /// The fields the receiver's system got last, when it runs in this
    /// process.
    fn received_fields(&self, receiver: &str) -> Option<String> {
        match self {
            Target::Local(sys) => sys
                .systems
                .get(receiver)
                .and_then(|s| s.received().last().cloned())
                .map(|r| keys(r.document.to_string().as_bytes())),
            Target::Running { .. } => None,
        }
    }
}

/// A failed expectation: what was expected and what happened.
type Step = Result<(), String>;

fn fixture(
    config: &std::path::Path,
    dept: &str,
    file: &str,
    line: usize,
) -> Result<Vec<u8>, String> {
    let path = config.join("fixtures").join(dept).join(file);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .nth(line)
        .map(|l| l.as_bytes().to_vec())
        .ok_or_else(|| format!("{} has no line {}", path.display(), line + 1))
}

fn keys(json: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(json)
        .ok()
        .and_then(|v| {
            v.as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "))
        })
        .unwrap_or_default()
}

pub async fn run(args: DemoArgs) -> CliResult {
    if args.running {
        let target = Target::running(&args.config)?;
        println!(
            "playing against the running broker at https://{}\n",
            target.broker_addr()
        );
        return play(&target, &args.config, "the running broker's").await;
    }
    let _ = std::fs::remove_dir_all(&args.state);
    std::fs::create_dir_all(&args.state)
        .map_err(|e| format!("cannot create {}: {e}", args.state.display()))?;
    let mut opts = Options::project_defaults();
    opts.config = args.config.clone();
    if let Ok(local) = std::path::Path::new("schemas").canonicalize() {
        opts.schemas = local;
    }
    // The configured log (broker.toml's [audit] store), so that an auditor finds the demo's
    // entries with `crossgate audit search` afterwards; and the configured certificates,
    // whose record-reference secret is the key of the log's record-id digests, so that a
    // search by record id finds them too.
    let config = crossgate_broker::BrokerConfig::load(&args.config)?;
    crate::cmd::up::dev_certificates(&args.config, &config)?;
    opts.certs = Some(config.certs.clone());
    let log = config.audit.store;
    opts.audit_store = Some(log.clone());
    opts.state_dir = Some(args.state.clone());
    println!(
        "starting the broker, {} department adapters and their systems on loopback (mutual TLS)...",
        10
    );
    let sys = Target::Local(Box::new(LocalSystem::start(opts).await?));
    println!("broker at https://{}\n", sys.broker_addr());
    let code = play(&sys, &args.config, &log).await;
    // Stopped and waited for: the broker writes what it still holds (the
    // throttled calls' entries) before the process ends.
    if let Target::Local(sys) = &sys {
        sys.stop().await;
    }
    code
}

/// The six scenarios, then the verdict.
async fn play(sys: &Target, config: &std::path::Path, log: &str) -> CliResult {
    let steps: [(&str, Step); 6] = [
        ("(a) the land port", land_port(sys, config).await),
        ("(b) newborn", newborn(sys, config).await),
        ("(c) school enrolment", school_enrolment(sys).await),
        ("(d) a bad record", bad_record(sys, config).await),
        ("(e) a burst over the limit", burst(sys).await),
        ("(f) the auditor", auditor(sys).await),
    ];
    println!();
    let mut ok = true;
    for (name, result) in &steps {
        match result {
            Ok(()) => println!("  ok      {name}"),
            Err(e) => {
                ok = false;
                println!("  FAILED  {name}: {e}");
            }
        }
    }
    if ok {
        println!("\nall six scenarios behaved as expected; the audit log is {log}");
        Ok(ExitCode::Ok)
    } else {
        Ok(ExitCode::Failed)
    }
}

async fn ingress(
    sys: &Target,
    dept: &str,
) -> Result<IngressClient<tonic::transport::Channel>, String> {
    let addr = sys
        .adapter_addr(dept)
        .ok_or_else(|| format!("no adapter for {dept}"))?;
    Ok(IngressClient::new(sys.channel(addr, dept).await?))
}

async fn submit(
    sys: &Target,
    dept: &str,
    native_type: &str,
    json: Vec<u8>,
) -> Result<SubmitResponse, tonic::Status> {
    let mut client = ingress(sys, dept)
        .await
        .map_err(tonic::Status::unavailable)?;
    client
        .submit(SubmitRequest {
            record: Some(NativeRecord {
                native_type: native_type.into(),
                record_id: String::new(),
                json,
            }),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// Print what each receiver's system got and check who got it.
fn show_receipts(sys: &Target, reply: &SubmitResponse, expected: &[&str]) -> Step {
    for d in &reply.deliveries {
        let fields = sys
            .received_fields(&d.receiver)
            .unwrap_or_else(|| d.released_fields.join(", "));
        println!(
            "    -> {:<18} {:<9} fields: {fields}",
            d.receiver, d.outcome
        );
    }
    let mut receivers: Vec<&str> = reply
        .deliveries
        .iter()
        .map(|d| d.receiver.as_str())
        .collect();
    let mut expected = expected.to_vec();
    receivers.sort();
    expected.sort();
    let all_delivered = reply.deliveries.iter().all(|d| d.outcome == "delivered");
    if receivers == expected && all_delivered {
        Ok(())
    } else {
        Err(format!(
            "expected {expected:?} all delivered, got {:?}",
            reply.deliveries
        ))
    }
}

async fn land_port(sys: &Target, config: &std::path::Path) -> Step {
    println!(
        "(a) the land port: customs publishes one declaration; border inspection and commerce each get their part"
    );
    let reply = submit(
        sys,
        "customs",
        "declarations",
        fixture(config, "customs", "declarations.valid.jsonl", 0)?,
    )
    .await
    .map_err(|s| s.message().to_owned())?;
    println!(
        "    customs submitted a native declaration -> {}",
        reply.record_type
    );
    show_receipts(sys, &reply, &["border-inspection", "commerce"])
}

async fn newborn(sys: &Target, config: &std::path::Path) -> Step {
    println!(
        "(b) newborn: health publishes a birth; public security and medical insurance receive theirs"
    );
    let reply = submit(
        sys,
        "health",
        "births",
        fixture(config, "health", "births.valid.jsonl", 0)?,
    )
    .await
    .map_err(|s| s.message().to_owned())?;
    show_receipts(sys, &reply, &["public-security", "medical-insurance"])
}

async fn school_enrolment(sys: &Target) -> Step {
    println!(
        "(c) school enrolment: education looks up a child and a household at public security, with purpose and approval"
    );
    let mut education = ingress(sys, "education").await?;
    let lookup = |record_type: &str, purpose: &str, approval: &str, criteria: &[(&str, &str)]| {
        LookupRequest {
            provider: "public-security".into(),
            record_type: record_type.into(),
            purpose: purpose.into(),
            approval_reference: approval.into(),
            criteria: criteria
                .iter()
                .map(|(p, v)| Criterion {
                    path: (*p).into(),
                    value: (*v).into(),
                })
                .collect(),
        }
    };
    let child = "540202198107103540";
    let person = education
        .lookup(lookup(
            "person.v1",
            "school-enrolment",
            "",
            &[("/id_number", child)],
        ))
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    let record = person.records.first().ok_or("no person came back")?;
    println!(
        "    allowed: the child by identity number, with fields {}; withheld {}",
        keys(&record.json),
        person.withheld_fields.join(", ")
    );
    println!("    record_id is an opaque reference: {}", record.record_id);
    let seen = format!(
        "{} {}",
        record.record_id,
        String::from_utf8_lossy(&record.json)
    );
    if seen.contains(child) || record.record_id.len() != 32 {
        return Err("the identity number reached education".into());
    }
    for (what, criteria) in [
        ("without criteria", &[][..]),
        ("by /ethnicity", &[("/ethnicity", "05")][..]),
    ] {
        refused(
            &mut education,
            lookup("person.v1", "school-enrolment", "", criteria),
            &format!("a lookup {what}"),
        )
        .await?;
    }

    let household = [("/household_id", "11010567397679")];
    let reply = education
        .lookup(lookup(
            "household.v1",
            "school-enrolment",
            "EDU-2025-0001",
            &household,
        ))
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    let record = reply.records.first().ok_or("no household came back")?;
    let doc: serde_json::Value = serde_json::from_slice(&record.json).map_err(|e| e.to_string())?;
    println!(
        "    allowed under EDU-2025-0001: household {} with fields {}",
        doc["household_id"],
        keys(&record.json)
    );
    println!(
        "    members' identity numbers arrive masked: {}",
        doc["members"][0]["id_number"]
    );
    if !doc["members"][0]["id_number"]
        .as_str()
        .unwrap_or_default()
        .starts_with("****")
    {
        return Err("identity numbers were not masked".into());
    }
    refused(
        &mut education,
        lookup(
            "household.v1",
            "school-enrolment",
            "EDU-2025-0001",
            &[("/household_id", "54020239576099")],
        ),
        "another household under EDU-2025-0001",
    )
    .await?;
    refused(
        &mut education,
        lookup("household.v1", "marketing", "EDU-2025-0001", &household),
        "the wrong purpose",
    )
    .await
}

/// A lookup the broker must refuse with PERMISSION_DENIED; prints the reason.
async fn refused(
    education: &mut IngressClient<tonic::transport::Channel>,
    request: LookupRequest,
    what: &str,
) -> Step {
    match education.lookup(request).await {
        Err(s) if s.code() == Code::PermissionDenied => {
            let rule = s
                .get_details_error_info()
                .map(|i| i.reason)
                .ok_or_else(|| format!("{what}: the refusal names no rule"))?;
            println!(
                "    refused, {what}: {} (rule {rule})",
                s.message().trim_start_matches("broker: ")
            );
            Ok(())
        }
        other => Err(format!("{what} was not refused: {other:?}")),
    }
}

async fn bad_record(sys: &Target, config: &std::path::Path) -> Step {
    println!(
        "(d) a bad record: public security submits a person with a wrong identity check character and no name"
    );
    let mut person: serde_json::Value = serde_json::from_slice(&fixture(
        config,
        "public-security",
        "persons.invalid.jsonl",
        0,
    )?)
    .map_err(|e| e.to_string())?;
    if let Some(o) = person.as_object_mut() {
        o.remove("XM");
    }
    match submit(
        sys,
        "public-security",
        "persons",
        person.to_string().into_bytes(),
    )
    .await
    {
        Err(s) if s.code() == Code::InvalidArgument => {
            let violations = s
                .get_details_bad_request()
                .map(|b| b.field_violations)
                .unwrap_or_default();
            for v in &violations {
                println!("    rejected: {} -> {}", v.description, v.field);
            }
            if violations.len() == 2 {
                Ok(())
            } else {
                Err(format!("expected 2 faults, got {}", violations.len()))
            }
        }
        other => Err(format!("the record was not rejected: {other:?}")),
    }
}

async fn burst(sys: &Target) -> Step {
    println!(
        "(e) a burst: education queries faster than its limit; an operator raises it; the burst passes"
    );
    let chan = sys
        .channel(sys.broker_addr(), "operations")
        .await
        .map_err(|e| e.to_string())?;
    let mut admin = AdminClient::new(chan);
    let before = admin
        .get_limit(GetLimitRequest {
            partner: "education".into(),
        })
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    let burst = before.query.as_ref().map_or(10, |r| r.burst) as usize * 2 + 10;
    let education = BrokerClient::new(
        sys.channel(sys.broker_addr(), "education")
            .await
            .map_err(|e| e.to_string())?,
    );
    let query = || QueryRequest {
        provider: "public-security".into(),
        record_type: "person.v1".into(),
        purpose: "school-enrolment".into(),
        approval_reference: String::new(),
        criteria: vec![Criterion {
            path: "/id_number".into(),
            value: "540202198107103540".into(),
        }],
    };
    // All at once, so the burst outruns any rate the limit allows.
    let fire = async |n: usize| {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let mut client = education.clone();
                tokio::spawn(async move { client.query(query()).await })
            })
            .collect();
        let mut throttled = 0;
        for t in tasks {
            if let Ok(Err(s)) = t.await
                && s.code() == Code::ResourceExhausted
            {
                throttled += 1;
            }
        }
        throttled
    };
    let first = fire(burst).await;
    let rate = before
        .query
        .as_ref()
        .map(|r| format!("{} burst {}", r.rate, r.burst))
        .unwrap_or_default();
    println!("    {burst} queries at education's limit of {rate}: {first} throttled");
    admin
        .set_limit(SetLimitRequest {
            partner: "education".into(),
            mode: String::new(),
            limit: Some(Rate {
                rate: "500/s".into(),
                burst: 200,
            }),
        })
        .await
        .map_err(|s| s.message().to_owned())?;
    println!("    operations sets education to 500/s burst 200");
    let second = fire(burst).await;
    println!("    {burst} queries again: {second} throttled");
    // Back to what was in force: an operator's own override on a running
    // system is put back, not dropped.
    if before.source == "override" {
        for (mode, limit) in [("publish", &before.publish), ("query", &before.query)] {
            admin
                .set_limit(SetLimitRequest {
                    partner: "education".into(),
                    mode: mode.into(),
                    limit: limit.clone(),
                })
                .await
                .map_err(|s| s.message().to_owned())?;
        }
    } else {
        admin
            .reset_limit(GetLimitRequest {
                partner: "education".into(),
            })
            .await
            .map_err(|s| s.message().to_owned())?;
    }
    if first > 0 && second == 0 {
        Ok(())
    } else {
        Err(format!("throttled {first} then {second}"))
    }
}

async fn auditor(sys: &Target) -> Step {
    println!("(f) the auditor: what did education receive, and is the log intact?");
    let mut audit = AuditClient::new(
        sys.channel(sys.broker_addr(), "audit-office")
            .await
            .map_err(|e| e.to_string())?,
    );
    let mut stream = audit
        .search(SearchRequest {
            consumer: "education".into(),
            decision: "allowed".into(),
            ..Default::default()
        })
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    let mut received = 0;
    while let Some(e) = stream.message().await.map_err(|s| s.message().to_owned())? {
        if received < 3 {
            println!(
                "    {} {} from {} for {:?}: {}",
                e.time,
                e.record_type,
                e.provider,
                e.purpose,
                e.released_fields.join(" ")
            );
        }
        received += 1;
    }
    println!("    ... {received} allowed requests by education in the log");
    let verdict = audit
        .verify(VerifyRequest::default())
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    println!(
        "    verify: {} entries checked, {}",
        verdict.entries_checked,
        if verdict.ok {
            "the chain is intact"
        } else {
            "BROKEN"
        }
    );
    if received > 0 && verdict.ok {
        Ok(())
    } else {
        Err("nothing found, or the chain did not verify".into())
    }
}
