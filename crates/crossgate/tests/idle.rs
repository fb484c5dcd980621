//! An idle gateway does not spin: `crossgate up` with nothing to do uses
//! next to no CPU. (Each delivery lane once woke itself without end when it
//! held no lease, keeping both cores busy.) Linux only: CPU time from /proc.

mod common;

use common::Up;
use std::time::Duration;

/// User + system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name in parentheses: fields 14 and 15 (utime, stime).
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn an_idle_up_does_not_spin() {
    let up = Up::start(
        "idle",
        "metrics_listen = \"off\"",
        "[default]\nrate = \"100/s\"\nburst = 100\n",
    );
    // Past start-up: lanes have read the store and settled.
    std::thread::sleep(Duration::from_millis(1500));
    let before = cpu_ticks(up.child.id());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks(up.child.id()) - before;
    // 100 ticks a second per core: a spinning lane uses about 300 here.
    assert!(used < 60, "an idle up used {used} ticks of CPU in 3 s");
}
