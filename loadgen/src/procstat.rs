//! CPU time and resident memory of a server's whole process tree, from `/proc`: every process
//! whose process group is one of the given ids (each server is started with `setsid`).

use serde::Serialize;

/// One server process at one instant.
#[derive(Debug, Clone, Serialize)]
pub struct ProcSample {
    /// Process id.
    pub pid: u32,
    /// Process group.
    pub pgid: u32,
    /// `comm` (e.g. `workerd`, `node`).
    pub comm: String,
    /// What the process is: `workerd (proxy)` for the wrangler proxy in front of the Worker,
    /// `workerd` for the runtime that runs the Worker, else the command name.
    pub role: String,
    /// utime + stime, ms.
    pub cpu_ms: f64,
    /// Resident set, KiB.
    pub rss_kib: u64,
}

/// Samples every process of the process groups `pgids`. `proxy_port` names the port wrangler's
/// proxy listens on (the one clients connect to): a workerd whose command line serves it is the proxy.
pub fn sample(pgids: &[u32], proxy_port: Option<u16>) -> Vec<ProcSample> {
    let ticks = rustix::param::clock_ticks_per_second().max(1);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(p) = parse_stat(&stat) else { continue };
        if !pgids.contains(&p.pgid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let role = match proxy_port {
            Some(port) if p.comm == "workerd" && cmdline.contains(&format!(":{port}")) => {
                "workerd (proxy)".to_owned()
            }
            _ => p.comm.clone(),
        };
        #[allow(clippy::cast_precision_loss)] // ticks fit f64 exactly for any real run
        let cpu_ms = (p.utime + p.stime) as f64 * 1000.0 / ticks as f64;
        out.push(ProcSample {
            pid,
            pgid: p.pgid,
            comm: p.comm,
            role,
            cpu_ms,
            rss_kib: p.rss_pages * page_kib(),
        });
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// CPU used so far by this process (utime + stime of every thread), ms; 0 if `/proc` is unreadable.
pub fn own_cpu_ms() -> f64 {
    let ticks = rustix::param::clock_ticks_per_second().max(1);
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .as_deref()
        .and_then(parse_stat)
        // Ticks fit f64 exactly for any real run.
        .map_or(0.0, |p| (p.utime + p.stime) as f64 * 1000.0 / ticks as f64)
}

fn page_kib() -> u64 {
    (rustix::param::page_size() / 1024).max(1) as u64
}

#[derive(Debug, PartialEq, Eq)]
struct Stat {
    comm: String,
    pgid: u32,
    utime: u64,
    stime: u64,
    rss_pages: u64,
}

/// Parses `/proc/PID/stat` (proc(5)): `comm` is in parentheses and may contain spaces.
fn parse_stat(s: &str) -> Option<Stat> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field k is rest[k - 3].
    let field = |k: usize| rest.get(k - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        comm,
        pgid: u32::try_from(field(5)?).ok()?,
        utime: field(14)?,
        stime: field(15)?,
        rss_pages: field(24)?,
    })
}

/// CPU used between two samples, per role: (role, pids, cpu ms, rss KiB at the end).
pub fn delta(before: &[ProcSample], after: &[ProcSample]) -> Vec<ProcDelta> {
    let mut out: Vec<ProcDelta> = Vec::new();
    for a in after {
        let b = before
            .iter()
            .find(|b| b.pid == a.pid)
            .map_or(0.0, |b| b.cpu_ms);
        let cpu = a.cpu_ms - b;
        match out.iter_mut().find(|d| d.role == a.role) {
            Some(d) => {
                d.pids.push(a.pid);
                d.cpu_ms += cpu;
                d.rss_kib += a.rss_kib;
            }
            None => out.push(ProcDelta {
                role: a.role.clone(),
                pids: vec![a.pid],
                cpu_ms: cpu,
                rss_kib: a.rss_kib,
            }),
        }
    }
    out
}

/// CPU and memory of one role of the server tree over a window.
#[derive(Debug, Clone, Serialize)]
pub struct ProcDelta {
    /// Role (see [`ProcSample::role`]).
    pub role: String,
    /// Processes with this role.
    pub pids: Vec<u32>,
    /// CPU used in the window, ms.
    pub cpu_ms: f64,
    /// Resident memory at the end, KiB.
    pub rss_kib: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test data is ours
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_comm() {
        let s = "42 (work erd) S 1 40 40 0 -1 4194560 100 0 0 0 250 70 0 0 20 0 9 0 1000 123456 789 18446744073709551615";
        assert_eq!(
            parse_stat(s).unwrap(),
            Stat {
                comm: "work erd".into(),
                pgid: 40,
                utime: 250,
                stime: 70,
                rss_pages: 789
            }
        );
    }

    #[test]
    fn own_cpu_grows_with_work() {
        let before = own_cpu_ms();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        // Bounded: at most 5 s of spinning, until the clock tick (10 ms here) shows it.
        while own_cpu_ms() <= before && start.elapsed() < std::time::Duration::from_secs(5) {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert!(own_cpu_ms() > before, "{x}");
    }

    #[test]
    fn own_process_is_found_by_its_group() {
        let pgid = rustix::process::getpgrp()
            .as_raw_nonzero()
            .get()
            .unsigned_abs();
        let me = std::process::id();
        assert!(
            sample(&[pgid], None)
                .iter()
                .any(|p| p.pid == me && p.rss_kib > 0)
        );
    }
}
