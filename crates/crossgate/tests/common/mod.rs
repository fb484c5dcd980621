//! Helpers for tests that run crossgate as separate processes; the rest of
//! the test support is `crossgate-testing`.
#![allow(dead_code)]

#[allow(unused_imports)]
pub use crossgate_testing::{Processes, ROOT, TempDir, config_copy, wait_for, wait_for_child};
use std::process::{Command, Stdio};

/// The crossgate binary under test, run from the project root, quiet.
pub fn crossgate(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_crossgate"));
    c.args(args)
        .current_dir(ROOT)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// A moment `from` to `from + span` on, different from run to run: when a
/// kill test strikes, so that runs together cover the whole window.
pub fn random_moment(from: std::time::Duration, span: std::time::Duration) -> std::time::Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let span_ms = u64::try_from(span.as_millis()).unwrap().max(1);
    from + std::time::Duration::from_millis(u64::from(nanos) % span_ms)
}

/// `dept`'s adapter run in `dir` (a configuration folder): its reference
/// system's inbox is `<dept>.inbox.jsonl` and its delivery ids are kept
/// under `state/`, both in `dir`.
pub fn adapter_in(dir: &std::path::Path, dept: &str) -> Command {
    let inbox = format!("{dept}.inbox.jsonl");
    let mut c = crossgate(&[
        "adapter",
        "--config",
        ".",
        "--department",
        dept,
        "--inbox",
        &inbox,
        "--state",
        "state",
    ]);
    c.current_dir(dir);
    c
}

/// `crossgate up` from a copy of `deploy/local` on free loopback ports, its
/// reference systems seeded from the shipped fixtures; killed when dropped.
pub struct Up {
    pub dir: TempDir,
    pub broker_port: u16,
    pub child: std::process::Child,
}

impl Up {
    /// `broker_extra`: lines for broker.toml besides listen, certs and the
    /// audit store (SQLite in the folder); `limits`: limits.toml's text.
    pub fn start(name: &str, broker_extra: &str, limits: &str) -> Up {
        let dir = TempDir::new(name);
        let (broker_port, adapters) = config_copy(&dir);
        crossgate_testing::copy_dir(
            &std::path::Path::new(ROOT).join("deploy/local/fixtures"),
            &dir.join("fixtures"),
        );
        std::fs::write(
            dir.join("broker.toml"),
            format!(
                "listen = \"127.0.0.1:{broker_port}\"\ncerts = \"{}\"\n{broker_extra}\n\
                 [audit]\nstore = \"sqlite:{}\"\n",
                dir.join("certs").display(),
                dir.join("audit.db").display()
            ),
        )
        .unwrap();
        std::fs::write(dir.join("limits.toml"), limits).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_crossgate"))
            .args(["up", "--config", dir.to_str().unwrap()])
            // Its own adapter state: not the project's `.crossgate/adapters`,
            // which every test's `up` would otherwise share.
            .arg("--state")
            .arg(dir.join("adapters"))
            .current_dir(ROOT)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("up.stderr")).unwrap())
            .spawn()
            .unwrap();
        let mut up = Up {
            dir,
            broker_port,
            child,
        };
        let said = up.dir.join("up.stderr");
        crossgate_testing::wait_for_child(&mut up.child, broker_port, Some(&said));
        for (_, port) in &adapters {
            crossgate_testing::wait_for_child(&mut up.child, *port, Some(&said));
        }
        up
    }

    /// Kill the processes; the folder stays until the end.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The config folder, for `--config`.
    pub fn config(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// The audit store, for `audit --store`.
    pub fn store(&self) -> String {
        format!("sqlite:{}", self.dir.join("audit.db").display())
    }

    /// A Broker client over mutual TLS as `party` (connects on first use).
    /// Call inside a tokio runtime.
    pub fn client(
        &self,
        party: &str,
    ) -> crossgate_proto::broker_client::BrokerClient<tonic::transport::Channel> {
        broker_client(&self.dir.join("certs"), party, self.broker_port)
    }
}

/// A Broker client over mutual TLS as `party` with the certificates in
/// `certs` (connects on first use); call inside a tokio runtime.
pub fn broker_client(
    certs: &std::path::Path,
    party: &str,
    port: u16,
) -> crossgate_proto::broker_client::BrokerClient<tonic::transport::Channel> {
    let tls = crossgate_tls::Bundle::load(certs, party).unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls.client_for("broker"))
        .unwrap()
        .connect_lazy();
    crossgate_proto::broker_client::BrokerClient::new(channel)
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Education's lookup of one person at public security, for `purpose`.
pub fn person_lookup(provider: &str, purpose: &str) -> crossgate_proto::QueryRequest {
    crossgate_proto::QueryRequest {
        provider: provider.into(),
        record_type: "person.v1".into(),
        purpose: purpose.into(),
        approval_reference: String::new(),
        criteria: vec![crossgate_proto::Criterion {
            path: "/id_number".into(),
            value: "110105198405049582".into(),
        }],
    }
}

/// Publish each record at 100/s over `channel`; a call that gets no OK is
/// made again (the same record, after 200 ms: whichever broker answers
/// recognises a repeat) until one does, failing the test after `give_up`.
/// Returns how many calls were made again.
pub async fn publish_until_ok<T>(
    channel: T,
    records: Vec<crossgate_proto::Record>,
    give_up: std::time::Duration,
) -> u32
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};
    let retries = std::sync::Arc::new(AtomicU32::new(0));
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut calls = Vec::new();
    for record in records {
        tick.tick().await;
        let mut client = crossgate_proto::broker_client::BrokerClient::new(channel.clone());
        let retries = retries.clone();
        calls.push(tokio::spawn(async move {
            let until = Instant::now() + give_up;
            loop {
                let mut request = tonic::Request::new(crossgate_proto::PublishRequest {
                    record: Some(record.clone()),
                    ..Default::default()
                });
                request.set_timeout(Duration::from_secs(5));
                match client.publish(request).await {
                    Ok(_) => return,
                    Err(status) => {
                        assert!(Instant::now() < until, "no OK for {give_up:?}: {status:?}");
                        retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    retries.load(Ordering::Relaxed)
}
