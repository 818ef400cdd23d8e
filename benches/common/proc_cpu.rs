//! CPU time of a process from `/proc/<pid>/stat`, shared by the benchmarks
//! that report CPU per operation or the split between client and server.

use std::sync::OnceLock;

/// Clock ticks per second (`getconf CLK_TCK`, 100 when it cannot be asked);
/// asked once, so call [`cpu_seconds`] before a measured window starts.
fn ticks_per_second() -> f64 {
    static HZ: OnceLock<f64> = OnceLock::new();
    *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .unwrap_or(100.0)
    })
}

/// (user, system) CPU seconds of process `pid` (`"self"` for this one), all
/// threads; `None` when the process or its stat cannot be read.
pub fn cpu_seconds(pid: &str) -> Option<(f64, f64)> {
    let hz = ticks_per_second();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from after its ')';
    // utime and stime (fields 14 and 15) are then at 11 and 12.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let user: f64 = f.get(11)?.parse().ok()?;
    let system: f64 = f.get(12)?.parse().ok()?;
    Some((user / hz, system / hz))
}
