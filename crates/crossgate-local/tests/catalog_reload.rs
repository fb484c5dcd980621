//! An operator reloads the sharing catalog live: a withdrawn grant stops
//! releasing at once, a broken file is refused with its line and the old
//! catalog stays, partners cannot reload, and every reload is audited.

mod common;
use crossgate_broker::audit::Decision;
use crossgate_local::{LocalSystem, Options};
use crossgate_proto::admin_client::AdminClient;
use crossgate_proto::broker_client::BrokerClient;
use crossgate_proto::*;
use crossgate_testing::TempDir;
use tonic::Code;

fn person() -> QueryRequest {
    common::person_lookup()
}

#[tokio::test]
async fn an_operator_reloads_the_catalog_and_a_bad_file_changes_nothing() {
    let config = TempDir::new("catalog-reload");
    crossgate_testing::copy_dir(&crossgate_testing::deploy_local(), &config);
    let mut opts = Options::project_defaults();
    opts.config = config.to_path_buf();
    opts.departments = Some(vec!["public-security".into()]);
    let sys = LocalSystem::start(opts).await.expect("local system");
    let mut education = BrokerClient::new(
        sys.channel(&sys.broker_addr, "education")
            .await
            .expect("channel"),
    );
    let mut admin = AdminClient::new(
        sys.channel(&sys.broker_addr, "operations")
            .await
            .expect("channel"),
    );
    education.query(person()).await.expect("granted");

    // A broken catalog: refused with its line, the old one stays.
    let catalog = config.join("catalog.toml");
    let shipped = std::fs::read_to_string(&catalog).expect("catalog");
    std::fs::write(&catalog, format!("{shipped}\n[[grant]]\nid = 7\n")).expect("write");
    let refused = admin
        .reload_catalog(ReloadRequest {})
        .await
        .expect("answered")
        .into_inner();
    assert!(!refused.applied);
    // `id = 7` stands two lines after the shipped text and its blank line.
    let line = shipped.lines().count() + 3;
    assert!(
        refused.message.contains(&format!("catalog.toml:{line}: ")),
        "{}",
        refused.message
    );
    education
        .query(person())
        .await
        .expect("the old catalog stays");

    // The person grant withdrawn: the next query is refused.
    let start = shipped
        .find("[[grant]]\nid = \"education-person\"")
        .expect("the grant");
    let end = start
        + shipped[start..]
            .find("\n[[approval]]")
            .expect("the approvals after it");
    std::fs::write(
        &catalog,
        format!("{}{}", &shipped[..start], &shipped[end..]),
    )
    .expect("write");
    let applied = admin
        .reload_catalog(ReloadRequest {})
        .await
        .expect("answered")
        .into_inner();
    assert!(applied.applied, "{}", applied.message);
    let denied = education.query(person()).await.expect_err("withdrawn");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(
        denied.message(),
        "no grant lets education query public-security for person.v1"
    );

    // A partner cannot reload.
    let mut tax = AdminClient::new(sys.channel(&sys.broker_addr, "tax").await.expect("channel"));
    let status = tax
        .reload_catalog(ReloadRequest {})
        .await
        .expect_err("partner");
    assert_eq!(status.code(), Code::PermissionDenied);
    // Its refusal is in the log, counted within the second.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (by_tax, reloads): (Vec<_>, Vec<_>) = sys
        .memory_audit
        .as_ref()
        .expect("memory audit")
        .entries()
        .into_iter()
        .filter(|e| e.kind == crossgate_broker::audit::Kind::Admin)
        .partition(|e| e.consumer == "tax");
    assert_eq!(by_tax.len(), 1, "{by_tax:?}");
    assert_eq!(by_tax[0].decision, Decision::Denied);
    assert!(
        by_tax[0]
            .reason
            .ends_with("tax has the role partner; this call needs the role operator"),
        "{}",
        by_tax[0].reason
    );
    // Both reloads are in the log, by whom: the refused one with its line,
    // the applied one with the digest of the catalog now in force.
    assert_eq!(reloads.len(), 2);
    assert_eq!(reloads[0].decision, Decision::Invalid);
    assert!(
        reloads[0].reason.starts_with("not reloaded: ")
            && reloads[0]
                .reason
                .contains(&format!("catalog.toml:{line}: ")),
        "{}",
        reloads[0].reason
    );
    // The operator is told the file's fault; the log names its line and
    // quotes nothing of the file (an approval's subject would be a
    // citizen's identity number).
    assert!(
        refused.message.contains("integer `7`"),
        "{}",
        refused.message
    );
    assert!(
        !reloads[0].reason.contains("integer `7`")
            && reloads[0]
                .reason
                .contains("refused (the operator was told why"),
        "{}",
        reloads[0].reason
    );
    assert_eq!(reloads[1].decision, Decision::Changed);
    assert_eq!(reloads[1].consumer, "operations");
    assert!(
        reloads[1].reason.starts_with("reloaded "),
        "{}",
        reloads[1].reason
    );
    let now_in_force = std::fs::read(&catalog).expect("catalog");
    assert_eq!(
        reloads[1].record_digest,
        crossgate_broker::audit::digest(&now_in_force)
    );
    // Old and new, by digest.
    let change = format!(
        "sha256 {} -> {} (by operations)",
        crossgate_broker::audit::digest(shipped.as_bytes()),
        crossgate_broker::audit::digest(&now_in_force)
    );
    assert!(
        reloads[1].reason.ends_with(&change),
        "{}",
        reloads[1].reason
    );
}
