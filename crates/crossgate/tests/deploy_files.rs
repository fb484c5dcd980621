//! The configuration the deployment files ship (deploy/compose and the
//! ConfigMap in deploy/kubernetes) loads as a broker's would: a typo there
//! fails here, not at a replica's start. The manifests themselves are
//! checked against their schemas by `.ci/run` (kubernetes-validate,
//! check-jsonschema, hadolint).

mod common;

use common::{ROOT, TempDir};
use std::path::Path;

/// A config folder as a container sees it: the deployment's broker.toml
/// and partners.toml beside deploy/local's catalog and limits.
fn load(broker: &str, partners: &str) -> crossgate_broker::deployment::Deployment {
    let dir = TempDir::new("deploy-files");
    let local = Path::new(ROOT).join("deploy/local");
    std::fs::write(dir.join("broker.toml"), broker).unwrap();
    std::fs::write(dir.join("partners.toml"), partners).unwrap();
    for file in ["catalog.toml", "limits.toml"] {
        std::fs::copy(local.join(file), dir.join(file)).unwrap();
    }
    crossgate_broker::deployment::Deployment::load(
        &dir,
        std::sync::Arc::new(
            crossgate_schema::Registry::load_dir(Path::new(ROOT).join("schemas")).unwrap(),
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The block `key: |` of a ConfigMap, unindented.
fn block(yaml: &str, key: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in yaml.lines() {
        if line.trim_end() == format!("  {key}: |") {
            inside = true;
            continue;
        }
        if inside {
            if line.is_empty() {
                out.push('\n');
            } else if let Some(rest) = line.strip_prefix("    ") {
                out.push_str(rest);
                out.push('\n');
            } else {
                break;
            }
        }
    }
    assert!(!out.is_empty(), "no {key} in the ConfigMap");
    out
}

#[test]
fn the_compose_brokers_configuration_loads_with_two_replicas_on_postgresql_and_redis() {
    let read = |f: &str| std::fs::read_to_string(Path::new(ROOT).join(f)).unwrap();
    let dep = load(
        &read("deploy/compose/broker.toml"),
        &read("deploy/compose/partners.toml"),
    );
    let cluster = dep.config.cluster.as_ref().expect("[cluster]");
    assert_eq!(cluster.replicas, 2);
    assert_eq!(cluster.fail_mode("tax").as_str(), "closed");
    assert_eq!(cluster.fail_mode("customs").as_str(), "open");
    assert!(dep.config.audit.shares_store());
    assert!(dep.config.health_listen.is_some());
    assert!(
        dep.partners
            .iter()
            .filter_map(|p| p.adapter.as_deref())
            .all(|a| a.starts_with("adapter-")),
        "every adapter at its compose service"
    );
}

#[test]
fn the_kubernetes_configmaps_configuration_loads_and_takes_each_replicas_writer_from_its_pod() {
    let yaml =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/kubernetes/configmap.yaml")).unwrap();
    let mut dep = load(&block(&yaml, "broker.toml"), &block(&yaml, "partners.toml"));
    assert_eq!(dep.config.cluster.as_ref().map(|c| c.replicas), Some(2));
    dep.config.apply_env(|name| match name {
        "CROSSGATE_AUDIT_WRITER" => Some("crossgate-broker-7d9f-abcde".into()),
        "CROSSGATE_REDIS_URL" => Some("redis://:secret@redis:6379".into()),
        _ => None,
    });
    assert_eq!(dep.config.audit.writer, "crossgate-broker-7d9f-abcde");
    assert_eq!(
        dep.config.cluster.as_ref().map(|c| c.redis.as_str()),
        Some("redis://:secret@redis:6379")
    );
    assert_eq!(
        dep.config.audit.store, "postgres://crossgate@postgres:5432/crossgate",
        "unset variables change nothing"
    );
}
