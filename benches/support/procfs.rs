//! What the harness reads about a process from /proc (Linux only): CPU time, resident memory,
//! open file descriptors, and a description of the machine.

use std::collections::HashMap;
use std::process::Command;

/// CPU time of a process, by thread (nanoseconds on CPU, from `/proc/PID/task/TID/schedstat`)
/// and in total (`utime + stime` from `/proc/PID/stat`, in clock ticks, which also counts
/// threads that have exited).
#[derive(Clone, Debug)]
pub struct CpuSample {
    threads: HashMap<u32, u64>,
    ticks: u64,
}

/// How a CPU time delta was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuSource {
    /// Per-thread schedstat: nanosecond resolution.
    Schedstat,
    /// A thread exited within the window, so the tick counters were used (10 ms resolution).
    Ticks,
}

impl CpuSample {
    pub fn read(pid: u32) -> anyhow::Result<CpuSample> {
        let ticks = stat_ticks(&format!("/proc/{pid}/stat"))?;
        let mut threads = HashMap::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let entry = entry?;
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let path = entry.path().join("schedstat");
            // A thread may exit between the listing and the read.
            if let Ok(text) = std::fs::read_to_string(path) {
                if let Some(ns) = text.split_whitespace().next().and_then(|s| s.parse().ok()) {
                    threads.insert(tid, ns);
                }
            }
        }
        Ok(CpuSample { threads, ticks })
    }

    /// CPU time spent between `earlier` and `self`, in seconds.
    pub fn since(&self, earlier: &CpuSample) -> (f64, CpuSource) {
        let lost = earlier
            .threads
            .iter()
            .any(|(tid, ns)| *ns > 0 && !self.threads.contains_key(tid));
        if lost {
            let ticks = self.ticks.saturating_sub(earlier.ticks);
            return (ticks as f64 / clock_ticks_per_second(), CpuSource::Ticks);
        }
        let ns: u64 = self
            .threads
            .iter()
            .map(|(tid, ns)| ns.saturating_sub(earlier.threads.get(tid).copied().unwrap_or(0)))
            .sum();
        (ns as f64 / 1e9, CpuSource::Schedstat)
    }
}

fn stat_ticks(path: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let (_, rest) = text
        .rsplit_once(')')
        .ok_or_else(|| anyhow::anyhow!("unexpected {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime); `rest` starts at field 3.
    let field = |n: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(n - 3)
            .ok_or_else(|| anyhow::anyhow!("short {path}"))?
            .parse()?)
    };
    Ok(field(14)? + field(15)?)
}

/// CPU time of the calling process so far, in seconds (clock-tick resolution).
pub fn own_cpu_seconds() -> f64 {
    stat_ticks("/proc/self/stat").map_or(0.0, |t| t as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Resident memory of a process, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// VmRSS: every resident page, file-backed (the binary's code) included.
    pub rss: u64,
    /// VmHWM: the highest VmRSS so far.
    pub peak: u64,
    /// RssAnon: the process's own private memory (heap, stacks).
    pub anon: u64,
}

pub fn memory_kib(pid: u32) -> anyhow::Result<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow::anyhow!("no {name} in /proc/{pid}/status"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("bad {name} line"))?
            .parse()?)
    };
    Ok(Memory {
        rss: field("VmRSS:")?,
        peak: field("VmHWM:")?,
        anon: field("RssAnon:")?,
    })
}

/// Open file descriptors and how many of them are sockets.
pub fn open_fds(pid: u32) -> (usize, usize) {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0);
    };
    let mut total = 0;
    let mut sockets = 0;
    for entry in entries.flatten() {
        total += 1;
        if std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        {
            sockets += 1;
        }
    }
    (total, sockets)
}

pub fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// One line per fact about the machine the figures come from.
pub fn machine() -> Vec<(String, String)> {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_string(), |(_, v)| v.trim().to_string());
    let mhz = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| format!(" @ {} MHz", v.trim()))
        .unwrap_or_default();
    let meminfo = read("/proc/meminfo");
    let memory = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or("unknown".to_string(), |kib| {
            format!("{:.1} GiB", kib / 1024.0 / 1024.0)
        });
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let command = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map_or("unknown".to_string(), |s| s.trim().to_string())
    };
    vec![
        ("CPUs (available to the harness)".into(), cpus.to_string()),
        ("CPU model".into(), format!("{model}{mhz}")),
        ("memory".into(), memory),
        (
            "kernel".into(),
            format!("Linux {}", read("/proc/sys/kernel/osrelease").trim()),
        ),
        ("rustc".into(), command("rustc", &["--version"])),
        (
            "date (UTC)".into(),
            k8s_openapi::jiff::Timestamp::now()
                .strftime("%Y-%m-%d %H:%M")
                .to_string(),
        ),
    ]
}

/// CPU time the whole machine spent busy (all CPUs, every process), in seconds so far.
pub fn machine_busy_seconds() -> f64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    busy as f64 / clock_ticks_per_second()
}
