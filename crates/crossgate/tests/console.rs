//! `crossgate console` as an auditor runs it: over the store of a running
//! `up`, and through the broker with the auditor's certificate (where each
//! page's reading is written to the log). Pages are fetched over HTTP.

mod common;

use common::{ROOT, Up, person_lookup};
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};

struct Console(Child);

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn console(args: &[&str]) -> (Console, u16) {
    let port = crossgate_testing::free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_crossgate"))
        .arg("console")
        .args(args)
        .args(["--listen", &listen])
        .current_dir(ROOT)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_for(port);
    (Console(child), port)
}

fn get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn the_console_reads_a_running_logs_store_and_through_the_broker_audits_each_page() {
    let up = Up::start(
        "console",
        "metrics_listen = \"off\"",
        "[default]\nrate = \"1000/s\"\nburst = 1000\n",
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut education = up.client("education");
        for _ in 0..3 {
            education
                .query(person_lookup("public-security", "school-enrolment"))
                .await
                .unwrap();
        }
        let denied = education
            .query(person_lookup("public-security", "curiosity"))
            .await;
        assert_eq!(denied.unwrap_err().code(), tonic::Code::PermissionDenied);
    });

    // Over the store.
    let store = up.store();
    let (_c, port) = console(&["--store", &store]);
    let page = get(port, "/?consumer=education");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("4 entries match"), "{page}");
    let verify = get(port, "/verify");
    assert!(verify.contains("Every chain verifies"), "{verify}");
    // Each view is in the log, in the console's own chain.
    let views = get(port, "/export.jsonl?consumer=console%40loopback");
    assert!(
        views.contains("\"reason\":\"console /?consumer=education\""),
        "{views}"
    );
    assert!(views.contains("\"reason\":\"console /verify?\""), "{views}");
    assert!(
        views.contains("\"writer\":\"console\""),
        "the console's own chain: {views}"
    );
    assert!(views.contains("\"kind\":\"audit\""), "{views}");

    // Through the broker, as the audit office: the same entries, and each
    // page's reading is in the log.
    let broker = format!("https://127.0.0.1:{}", up.broker_port);
    let (_b, port) = console(&["--broker", &broker, "--config", up.config()]);
    let page = get(port, "/?consumer=education&decision=allowed");
    assert!(page.contains("3 entries match"), "{page}");
    let verify = get(port, "/verify");
    assert!(verify.contains("Every chain verifies"), "{verify}");
    let audited = get(port, "/?consumer=audit-office");
    assert!(
        audited.contains("entries match") && !audited.contains("0 entries match"),
        "the console's own readings are in the log: {audited}"
    );

    // Not on a network address: refused at start, exit 2.
    let out = Command::new(env!("CARGO_BIN_EXE_crossgate"))
        .args(["console", "--store", &store, "--listen", "0.0.0.0:7499"])
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback only"));
    // A record-id key asked for and not usable: refused at start, exit 2,
    // rather than a console whose searches by record id find nothing.
    let bad_key = up.dir.join("bad.key");
    std::fs::write(&bad_key, "not a key\n").unwrap();
    let listen = format!("127.0.0.1:{}", crossgate_testing::free_port());
    let out = Command::new(env!("CARGO_BIN_EXE_crossgate"))
        .args(["console", "--store", &store, "--listen", &listen])
        .args([
            "--id-key",
            bad_key.to_str().unwrap(),
            "--writer",
            "console-2",
        ])
        .current_dir(ROOT)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("bad.key is not a record-id key"), "{said}");
    // A partner's certificate gets no page of the log.
    let certs = up.dir.join("certs");
    let (_p, port) = console(&[
        "--broker",
        &broker,
        "--config",
        up.config(),
        "--cert",
        certs.join("education.pem").to_str().unwrap(),
    ]);
    let refused = get(port, "/");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("PermissionDenied"), "{refused}");
    assert!(!refused.contains("entries match"));
    // The broker logs the refusal, counted within the second.
    std::thread::sleep(std::time::Duration::from_millis(1500));

    // HTTPS for a network: the auditor's certificate reads, a partner's is
    // refused on every page, no certificate gets no connection.
    let certs_dir = certs.to_str().unwrap().to_owned();
    let (_t, port) = console(&[
        "--store",
        &store,
        "--config",
        up.config(),
        "--writer",
        "console-https",
        "--tls-cert",
        &format!("{certs_dir}/broker.pem"),
        "--tls-key",
        &format!("{certs_dir}/broker.key"),
    ]);
    runtime.block_on(async {
        let page = https_get(
            port,
            &certs,
            Some("audit-office"),
            "/?consumer=education&decision=allowed",
        )
        .await
        .unwrap();
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.contains("3 entries match"), "{page}");
        // Education's console was refused the log, and the log says so.
        let refusals = https_get(
            port,
            &certs,
            Some("audit-office"),
            "/export.jsonl?consumer=education&decision=denied",
        )
        .await
        .unwrap();
        assert!(
            refusals.contains(" call(s) refused from ")
                && refusals
                    .contains("education has the role partner; this call needs the role auditor"),
            "{refusals}"
        );
        // The auditor's views are written under its name.
        let views = https_get(
            port,
            &certs,
            Some("audit-office"),
            "/export.jsonl?consumer=audit-office",
        )
        .await
        .unwrap();
        assert!(
            views.contains("\"reason\":\"console /?consumer=education&decision=allowed\""),
            "{views}"
        );
        let partner = https_get(port, &certs, Some("education"), "/")
            .await
            .unwrap();
        assert!(partner.starts_with("HTTP/1.1 403"), "{partner}");
        assert!(partner.contains("education is not an auditor"), "{partner}");
        assert!(!partner.contains("entries match"));
        let anonymous = https_get(port, &certs, None, "/").await;
        assert!(
            anonymous.as_ref().map_or(true, |a| a.is_empty()),
            "no page without a certificate: {anonymous:?}"
        );
    });
}

/// GET `path` over HTTPS as `party` (or with no client certificate).
async fn https_get(
    port: u16,
    certs: &std::path::Path,
    party: Option<&str>,
    path: &str,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match party {
        Some(id) => {
            let chain = CertificateDer::pem_file_iter(certs.join(format!("{id}.pem")))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(certs.join(format!("{id}.key"))).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(crossgate_tls::server_name("broker")).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: console\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}
