//! The broker and three adapters as separate processes, started from a copy
//! of deploy/local with development certificates, carry a customs
//! declaration to border inspection and commerce, each seeing only its part.

use crossgate_proto::ingress_client::IngressClient;
use crossgate_proto::{NativeRecord, SubmitRequest};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// Kills its processes when the test ends, pass or fail.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// deploy/local with every listen address moved to a free port.
fn config_copy(dir: &Path) -> (u16, Vec<(String, u16)>) {
    std::fs::create_dir_all(dir.join("departments")).unwrap();
    for entry in std::fs::read_dir(format!("{ROOT}/deploy/local/departments")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            dir.join("departments").join(entry.file_name()),
        )
        .unwrap();
    }
    std::fs::copy(
        format!("{ROOT}/deploy/local/catalog.toml"),
        dir.join("catalog.toml"),
    )
    .unwrap();
    let broker_port = free_port();
    std::fs::write(
        dir.join("broker.toml"),
        format!(
            "listen = \"127.0.0.1:{broker_port}\"\ncerts = \"{}\"\n",
            dir.join("certs").display()
        ),
    )
    .unwrap();
    let mut partners =
        std::fs::read_to_string(format!("{ROOT}/deploy/local/partners.toml")).unwrap();
    let mut ports = Vec::new();
    for line in partners.clone().lines() {
        if let Some(addr) = line
            .strip_prefix("adapter = \"")
            .and_then(|r| r.strip_suffix('"'))
        {
            let port = free_port();
            partners = partners.replace(addr, &format!("127.0.0.1:{port}"));
            ports.push(port);
        }
    }
    std::fs::write(dir.join("partners.toml"), &partners).unwrap();
    let ids: Vec<String> = partners
        .lines()
        .filter_map(|l| {
            l.strip_prefix("id = \"")
                .and_then(|r| r.strip_suffix('"'))
                .map(str::to_owned)
        })
        .collect();
    (broker_port, ids.into_iter().zip(ports).collect())
}

fn crossgate(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_crossgate"));
    c.args(args)
        .current_dir(ROOT)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn wait_for(port: u16) {
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_processes_carry_a_declaration_to_each_receiver_its_part() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("crossgate-processes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (broker_port, adapters) = config_copy(&dir);
    let config = dir.to_str().unwrap().to_owned();
    let certs = dir.join("certs");
    let made = crossgate(&[
        "certs",
        "dev",
        "--config",
        &config,
        "--out",
        certs.to_str().unwrap(),
    ])
    .status()
    .unwrap();
    assert!(made.success());

    let port_of = |id: &str| {
        adapters
            .iter()
            .find(|(p, _)| p == id)
            .map(|(_, port)| *port)
            .unwrap()
    };
    let mut running = Processes(vec![
        crossgate(&["broker", "--config", &config]).spawn().unwrap(),
    ]);
    for dept in ["customs", "border-inspection", "commerce"] {
        let inbox = dir.join(format!("{dept}.inbox.jsonl"));
        running.0.push(
            crossgate(&[
                "adapter",
                "--config",
                &config,
                "--department",
                dept,
                "--inbox",
                inbox.to_str().unwrap(),
            ])
            .spawn()
            .unwrap(),
        );
    }
    wait_for(broker_port);
    for dept in ["customs", "border-inspection", "commerce"] {
        wait_for(port_of(dept));
    }

    let tls = crossgate_tls::Bundle::load(&certs, "customs").unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "https://127.0.0.1:{}",
        port_of("customs")
    ))
    .unwrap()
    .tls_config(tls.client())
    .unwrap()
    .connect()
    .await
    .unwrap();
    let declaration = std::fs::read_to_string(format!(
        "{ROOT}/deploy/local/fixtures/customs/declarations.valid.jsonl"
    ))
    .unwrap();
    let reply = IngressClient::new(channel)
        .submit(SubmitRequest {
            record: Some(NativeRecord {
                native_type: "declarations".into(),
                record_id: String::new(),
                json: declaration.lines().next().unwrap().as_bytes().to_vec(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<String> = reply
        .deliveries
        .iter()
        .map(|d| format!("{} {}", d.receiver, d.outcome))
        .collect();
    assert_eq!(
        outcomes,
        ["border-inspection delivered", "commerce delivered"]
    );

    let inbox = |dept: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(dir.join(format!("{dept}.inbox.jsonl"))).unwrap();
        assert_eq!(text.lines().count(), 1, "{dept}: {text}");
        serde_json::from_str(text.lines().next().unwrap()).unwrap()
    };
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    let border = inbox("border-inspection");
    assert_eq!(border["provider"], "customs");
    assert_eq!(
        keys(&border["record"]),
        [
            "declaration_id",
            "declared_on",
            "direction",
            "port_code",
            "transport"
        ]
    );
    let commerce = inbox("commerce");
    assert_eq!(
        keys(&commerce["record"]),
        [
            "declaration_id",
            "declared_on",
            "direction",
            "goods",
            "trader_uscc"
        ]
    );
}
