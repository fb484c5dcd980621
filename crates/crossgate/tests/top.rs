//! `crossgate top` against a running `crossgate up`: education, limited to
//! 20 queries/s, asks about 60 times a second; top shows it throttled. An
//! operator raises the limit with `crossgate limits set` and the next
//! frames show the new limit and nothing throttled. The live view is also
//! run in a terminal (tmux) and its screen read back.

mod common;

use common::{ROOT, Up, broker_client, person_lookup};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Education's row of one frame, split at whitespace:
/// partner, calls/s, throttled/s, errors/s, p99, then the limits.
fn education_row(config: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_crossgate"))
        .args(["top", "--once", "--config", config])
        .current_dir(ROOT)
        .output()
        .unwrap();
    let frame = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{frame}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(frame.contains("PARTNER"), "{frame}");
    frame
        .lines()
        .find(|l| l.starts_with("education "))
        .unwrap_or_else(|| panic!("no education row in {frame}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn number(s: &str) -> f64 {
    s.parse().unwrap()
}

#[test]
fn top_shows_a_partner_throttled_and_the_effect_of_a_new_limit_at_once() {
    let up = Up::start(
        "top",
        "metrics_listen = \"off\"",
        "[default]\nrate = \"1000/s\"\nburst = 1000\n[partner.education]\nrate = \"20/s\"\nburst = 10\n",
    );
    let config = up.config().to_owned();

    // Education asks about 60 times a second until the test ends.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let certs = up.dir.join("certs");
        let port = up.broker_port;
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut client = broker_client(&certs, "education", port);
                let mut tick = tokio::time::interval(Duration::from_millis(16));
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let _ = client
                        .query(person_lookup("public-security", "school-enrolment"))
                        .await;
                }
            });
        })
    };

    // Throttled: about 20 of about 60 answered each second.
    let until = Instant::now() + Duration::from_secs(15);
    let mut row = education_row(&config);
    while number(&row[2]) < 20.0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(300));
        row = education_row(&config);
    }
    assert!(number(&row[1]) >= 40.0, "calls/s: {row:?}");
    assert!(number(&row[2]) >= 20.0, "throttled/s: {row:?}");
    assert_eq!(number(&row[3]), 0.0, "errors/s: {row:?}");
    assert!(
        row[4].starts_with('≤') && row[4].ends_with("ms"),
        "p99: {row:?}"
    );
    assert_eq!(row[5..8], ["20/s", "burst", "10"], "query limit: {row:?}");

    // The live view in a terminal: the same row, redrawn.
    let socket = format!("crossgate-top-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .output()
            .expect("tmux is installed (.ci/run checks)")
    };
    let command = format!("{} top --config {config}", env!("CARGO_BIN_EXE_crossgate"));
    let started = tmux(&["new-session", "-d", "-x", "160", "-y", "20", &command]);
    assert!(started.status.success(), "{started:?}");
    let screen = || String::from_utf8_lossy(&tmux(&["capture-pane", "-p"]).stdout).into_owned();
    let until = Instant::now() + Duration::from_secs(10);
    let mut shown = screen();
    while !shown.contains("education ") && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
        shown = screen();
    }
    let first_header = shown.lines().next().unwrap_or_default().to_owned();
    std::thread::sleep(Duration::from_millis(1500));
    let later = screen();

    // An operator raises the limit: the next frames show it, and nothing
    // throttled.
    let set = Command::new(env!("CARGO_BIN_EXE_crossgate"))
        .args([
            "limits",
            "set",
            "education",
            "--rate",
            "500/s",
            "--burst",
            "500",
            "--config",
        ])
        .arg(&config)
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(set.status.success(), "{set:?}");
    let until = Instant::now() + Duration::from_secs(10);
    let mut row = education_row(&config);
    while (row[5] != "500/s" || number(&row[2]) > 0.0) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(300));
        row = education_row(&config);
    }
    let live_after = screen();
    let _ = tmux(&["kill-server"]);

    // A partner's certificate is refused: Top is for operators, and says
    // nothing of other partners to anyone else.
    let certs = up.dir.join("certs");
    let as_partner = Command::new(env!("CARGO_BIN_EXE_crossgate"))
        .args(["top", "--once", "--config", &config, "--cert"])
        .arg(certs.join("education.pem"))
        .arg("--key")
        .arg(certs.join("education.key"))
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert_eq!(as_partner.status.code(), Some(1));
    let said = String::from_utf8_lossy(&as_partner.stderr);
    assert!(said.contains("PermissionDenied"), "{said}");
    assert!(
        as_partner.stdout.is_empty(),
        "no frame for a partner: {}",
        String::from_utf8_lossy(&as_partner.stdout)
    );
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();

    assert!(
        shown.contains("education "),
        "the terminal showed:\n{shown}"
    );
    assert!(
        shown.starts_with("crossgate top"),
        "a redraw starts at the top of the screen:\n{shown}"
    );
    assert_ne!(
        later.lines().next().unwrap_or_default(),
        first_header,
        "the frame is redrawn each second (its clock moves):\n{later}"
    );
    assert_eq!(row[5..8], ["500/s", "burst", "500"], "{row:?}");
    assert_eq!(number(&row[2]), 0.0, "throttled/s after the raise: {row:?}");
    assert!(number(&row[1]) >= 40.0, "{row:?}");
    assert!(
        live_after.contains("500/s burst 500"),
        "the live view shows the new limit:\n{live_after}"
    );
}
