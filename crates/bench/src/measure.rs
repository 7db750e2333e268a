//! Small measuring tools: this process's memory from `/proc/self/status`,
//! percentiles, and the machine the run happened on (for the report).

use std::time::Duration;

/// A `kB` field of `/proc/self/status` (`VmHWM`, `VmRSS`), in bytes; `None`
/// where procfs does not exist.
pub fn status_bytes(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kilobytes: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kilobytes * 1024)
    })
}

/// Peak resident set size of this process so far.
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM")
}

/// Current resident set size of this process.
pub fn rss_bytes() -> Option<u64> {
    status_bytes("VmRSS")
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Nearest-rank percentiles of `samples`; `None` when there are none.
pub fn percentiles(mut samples: Vec<Duration>) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = |fraction: f64| {
        let index = (fraction * samples.len() as f64).ceil() as usize;
        samples[index.clamp(1, samples.len()) - 1]
    };
    let milliseconds = |duration: Duration| duration.as_secs_f64() * 1000.0;
    Some(Percentiles {
        count: samples.len(),
        p50_ms: milliseconds(rank(0.50)),
        p99_ms: milliseconds(rank(0.99)),
        max_ms: milliseconds(samples[samples.len() - 1]),
    })
}

/// The machine, as `docs/performance.md` records it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_bytes: u64,
    pub load_average_at_start: String,
}

impl Machine {
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(
                || "unknown".to_owned(),
                |(_, model)| model.trim().to_owned(),
            );
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines().find_map(|line| {
                    let rest = line.strip_prefix("MemTotal:")?;
                    rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
                })
            })
            .map_or(0, |kilobytes| kilobytes * 1024);
        let load_average_at_start = std::fs::read_to_string("/proc/loadavg")
            .map(|text| {
                text.split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            memory_bytes,
            load_average_at_start,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples = (1..=100).map(Duration::from_millis).collect();
        let result = percentiles(samples).unwrap();
        assert_eq!(result.count, 100);
        assert!((result.p50_ms - 50.0).abs() < 1e-9);
        assert!((result.p99_ms - 99.0).abs() < 1e-9);
        assert!((result.max_ms - 100.0).abs() < 1e-9);
        assert!(percentiles(Vec::new()).is_none());
    }

    #[test]
    fn this_process_has_a_peak_at_least_its_current_size() {
        if let (Some(peak), Some(now)) = (peak_rss_bytes(), rss_bytes()) {
            assert!(peak >= now);
            assert!(now > 0);
        }
    }
}
