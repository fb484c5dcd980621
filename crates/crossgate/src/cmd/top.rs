//! `crossgate top`: a live view for operators — per partner, calls/s now,
//! throttled/s, errors/s, the p99 of answered calls and the limit in force —
//! redrawn every second from the broker's `Admin.Top`, so that a limit set
//! with `crossgate limits set` shows its effect at once.

use crate::{CliError, CliResult, ExitCode};
use clap::Args;
use crossgate_proto::admin_client::AdminClient;
use crossgate_proto::{PartnerActivity, Rate, TopRequest, TopResponse};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::Duration;

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub conn: crate::cmd::connect::Connection,
    /// Print one frame and exit (for scripts and logs)
    #[arg(long)]
    pub once: bool,
    /// Stop after this many frames [default: until Ctrl-C]
    #[arg(long, value_name = "N")]
    pub frames: Option<u64>,
}

/// Between frames.
const EVERY: Duration = Duration::from_secs(1);

pub async fn run(args: TopArgs) -> CliResult {
    let stop = crate::cmd::stop_signal();
    tokio::pin!(stop);
    let broker = match &args.conn.broker {
        Some(list) => list.clone(),
        None => args
            .conn
            .endpoint("operations", "broker", None)?
            .uri()
            .to_string()
            .trim_end_matches('/')
            .to_owned(),
    };
    let mut admin = AdminClient::new(args.conn.channel("operations").await?);
    let frames = if args.once { Some(1) } else { args.frames };
    let terminal = std::io::stdout().is_terminal();
    let mut shown = 0u64;
    let mut tick = tokio::time::interval(EVERY);
    tick.tick().await;
    loop {
        let now = chrono::Utc::now()
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string();
        let frame = match admin.top(TopRequest {}).await {
            Ok(reply) => render(&reply.into_inner(), &broker, &now),
            // One frame asked for: its failure is the command's.
            Err(status) if frames == Some(1) => {
                return Err(CliError {
                    code: ExitCode::Failed,
                    message: format!(
                        "the broker refused Top: {:?}: {}",
                        status.code(),
                        status.message()
                    ),
                });
            }
            // Live: say so in the frame and ask again next second (a
            // broker restarting comes back).
            Err(status) => format!(
                "crossgate top — {broker} — {now}\n\nthe broker did not answer: {:?}: {}\n",
                status.code(),
                status.message()
            ),
        };
        let mut out = std::io::stdout().lock();
        if terminal {
            // Home and clear, then the frame: a plain redraw.
            let _ = write!(out, "\x1b[H\x1b[2J");
        } else if shown > 0 {
            let _ = writeln!(out);
        }
        let _ = write!(out, "{frame}");
        let _ = out.flush();
        shown += 1;
        if frames.is_some_and(|n| shown >= n) {
            return Ok(ExitCode::Ok);
        }
        tokio::select! {
            _ = &mut stop => return Ok(ExitCode::Ok),
            _ = tick.tick() => {}
        }
    }
}

/// One frame: a header, then a row per partner.
pub fn render(top: &TopResponse, broker: &str, now: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "crossgate top — {broker} — {now}\nrates: the last second; p99: calls answered in the last {} s\n",
        top.p99_window_seconds
    );
    let _ = writeln!(
        s,
        "{:<20} {:>8} {:>11} {:>9} {:>9}  {:<16} {:<16} SOURCE",
        "PARTNER", "CALLS/s", "THROTTLED/s", "ERRORS/s", "P99", "QUERY LIMIT", "PUBLISH LIMIT"
    );
    for p in &top.partners {
        let _ = writeln!(s, "{}", row(p));
    }
    s
}

fn row(p: &PartnerActivity) -> String {
    let limit = p.limit.clone().unwrap_or_default();
    let rate = |r: &Option<Rate>| match r {
        Some(r) if !r.rate.is_empty() => format!("{} burst {}", r.rate, r.burst),
        _ => "-".to_owned(),
    };
    let p99 = if p.answered == 0 {
        "-".to_owned()
    } else if p.p99_millis.is_infinite() {
        ">10s".to_owned()
    } else if p.p99_millis < 1.0 {
        format!("≤{:.1}ms", p.p99_millis)
    } else {
        format!("≤{:.0}ms", p.p99_millis)
    };
    format!(
        "{:<20} {:>8.0} {:>11.0} {:>9.0} {:>9}  {:<16} {:<16} {}",
        limit.partner,
        p.calls_per_second,
        p.throttled_per_second,
        p.errors_per_second,
        p99,
        rate(&limit.query),
        rate(&limit.publish),
        if limit.source.is_empty() {
            "-"
        } else {
            &limit.source
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossgate_proto::PartnerLimit;

    fn partner(
        id: &str,
        query: &str,
        calls: f64,
        throttled: f64,
        p99: f64,
        answered: u64,
    ) -> PartnerActivity {
        PartnerActivity {
            limit: Some(PartnerLimit {
                partner: id.into(),
                publish: Some(Rate {
                    rate: "100/s".into(),
                    burst: 50,
                }),
                query: Some(Rate {
                    rate: query.into(),
                    burst: 10,
                }),
                source: "config".into(),
                ..PartnerLimit::default()
            }),
            calls_per_second: calls,
            throttled_per_second: throttled,
            errors_per_second: 0.0,
            p99_millis: p99,
            answered,
        }
    }

    #[test]
    fn a_frame_shows_each_partner_with_its_rates_p99_and_limits() {
        let top = TopResponse {
            partners: vec![
                partner("commerce", "100/s", 3.0, 0.0, f64::INFINITY, 30),
                partner("customs", "100/s", 0.0, 0.0, 0.0, 0),
                partner("education", "20/s", 61.0, 41.0, 0.5, 198),
            ],
            p99_window_seconds: 10,
        };
        let frame = render(&top, "https://127.0.0.1:7000", "2026-11-23 13:00:00 UTC");
        assert_eq!(
            frame,
            "crossgate top — https://127.0.0.1:7000 — 2026-11-23 13:00:00 UTC\n\
             rates: the last second; p99: calls answered in the last 10 s\n\
             \n\
             PARTNER               CALLS/s THROTTLED/s  ERRORS/s       P99  QUERY LIMIT      PUBLISH LIMIT    SOURCE\n\
             commerce                    3           0         0      >10s  100/s burst 10   100/s burst 50   config\n\
             customs                     0           0         0         -  100/s burst 10   100/s burst 50   config\n\
             education                  61          41         0    ≤0.5ms  20/s burst 10    100/s burst 50   config\n"
        );
    }
}
