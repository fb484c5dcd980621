//! The first reload after a start reports the change from the text the
//! broker compiled, even when the file was edited after it was read.

use crossgate_broker::Broker;
use crossgate_broker::audit::{Decision, Kind, MemorySink, digest};
use crossgate_broker::deployment::{AuditChoice, Deployment, Wiring};
use crossgate_testing::TempDir;
use std::sync::Arc;

#[tokio::test]
async fn an_edit_after_the_catalog_was_read_is_a_change_at_the_first_reload() {
    let config = TempDir::new("start-digests");
    crossgate_testing::copy_dir(&crossgate_testing::deploy_local(), &config);
    let catalog = config.join("catalog.toml");
    let limits = config.join("limits.toml");
    let compiled_catalog = std::fs::read(&catalog).expect("catalog");
    let compiled_limits = std::fs::read(&limits).expect("limits");
    let registry = crossgate_schema::Registry::load_dir(crossgate_testing::root().join("schemas"))
        .expect("schemas");
    let dep = Deployment::load(&config, Arc::new(registry)).expect("deployment");

    // Edited between reading and building: not what is in force.
    let mut edited = compiled_catalog.clone();
    edited.extend_from_slice(b"\n# edited after the broker read it\n");
    std::fs::write(&catalog, &edited).expect("write");

    let ca = crossgate_tls::DevCa::new("start-digests").expect("ca");
    let (cert_pem, key_pem) = ca.issue("broker", 1, 30).expect("broker cert");
    let memory = Arc::new(MemorySink::default());
    let broker = Broker::from_deployment(
        dep,
        Wiring {
            tls: crossgate_tls::Bundle {
                cert_pem,
                key_pem,
                ca_pem: ca.pem().to_owned(),
            },
            references: crossgate_policy::ReferenceKey::random().expect("key"),
            audit: AuditChoice::Sink(memory.clone()),
            overrides_file: config.join("limits.overrides.toml"),
            checkpoints: None,
            limiter: None,
            metrics: None,
        },
    )
    .expect("broker");

    let said = broker.reload_on_signal().await;
    assert!(said.iter().all(Result::is_ok), "{said:?}");
    let reloads: Vec<_> = memory
        .entries()
        .into_iter()
        .filter(|e| e.kind == Kind::Admin && e.decision == Decision::Changed)
        .collect();
    assert_eq!(reloads.len(), 2, "{reloads:?}");
    // limits.toml was not touched: unchanged since start.
    assert!(
        reloads[0].reason.contains("limits.toml: unchanged"),
        "{}",
        reloads[0].reason
    );
    assert_eq!(reloads[0].record_digest, digest(&compiled_limits));
    // catalog.toml: from what was compiled to what the file holds now.
    let change = format!(
        "catalog.toml: sha256 {} -> {} (by signal:SIGHUP)",
        digest(&compiled_catalog),
        digest(&edited)
    );
    assert!(
        reloads[1].reason.ends_with(&change),
        "{}\nwanted it to end with {change}",
        reloads[1].reason
    );
}
