//! CPU and memory accounting: the tool's own CPU from `getrusage(RUSAGE_SELF)`, another
//! process's CPU from `/proc/<pid>/stat` and its peak RSS from `/proc/<pid>/status`.
//!
//! Both CPU sources count user + system time of every thread of the process. `/proc/<pid>/stat`
//! reports it in clock ticks (`sysconf(_SC_CLK_TCK)`, 100 Hz on Linux x86_64), so a server's
//! CPU per operation is only meaningful over runs of many ticks (≥ 1 s).

use std::io;
use std::time::Duration;

/// User + system CPU time this process has used so far (all threads).
pub fn self_cpu() -> Duration {
    // SAFETY: all-zero bytes are a valid `rusage` (plain integers and timevals).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage; RUSAGE_SELF needs nothing else.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(
        rc, 0,
        "getrusage(RUSAGE_SELF) cannot fail with valid arguments"
    );
    timeval(ru.ru_utime) + timeval(ru.ru_stime)
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
}

/// User + system CPU time of process `pid` (all threads), from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: cannot parse utime/stime from {stat:?}"),
        )
    })?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Ok(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / hz,
    ))
}

/// `utime + stime` in clock ticks from the text of `/proc/<pid>/stat`.
///
/// The second field (the command name in parentheses) may itself contain spaces and
/// parentheses, so fields are counted from the LAST `)`: after it come field 3 (state), …,
/// field 14 (utime) and field 15 (stime), 1-based as in proc(5).
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3; utime is field 14, i.e. the 12th item of `rest`.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Peak resident set size of `pid` in bytes (`VmHWM` of `/proc/<pid>/status`).
pub fn peak_rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_hwm(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/status has no VmHWM line"),
        )
    })
}

/// The largest peak RSS among `pids` (`None` for no pids).
pub fn max_peak_rss_bytes(pids: &[u32]) -> io::Result<Option<u64>> {
    let mut max = None;
    for &pid in pids {
        let rss = peak_rss_bytes(pid)?;
        max = Some(max.map_or(rss, |m: u64| m.max(rss)));
    }
    Ok(max)
}

/// The `VmHWM:  1234 kB` line of `/proc/<pid>/status`, in bytes.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// CPU time of this process and, optionally, of server processes (summed: the members of a
/// cluster), between two points of a run.
#[derive(Clone, Debug)]
pub struct CpuMeter {
    self_start: Duration,
    server: Vec<(u32, Duration)>,
}

/// What a [`CpuMeter`] measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuUsed {
    pub client: Duration,
    pub server: Option<Duration>,
}

impl CpuMeter {
    /// Starts measuring now; `server_pids` adds those processes' CPU (none: no server CPU).
    pub fn start(server_pids: &[u32]) -> io::Result<Self> {
        let server = server_pids
            .iter()
            .map(|&pid| Ok((pid, process_cpu(pid)?)))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(CpuMeter {
            self_start: self_cpu(),
            server,
        })
    }

    /// CPU used since [`CpuMeter::start`].
    pub fn stop(&self) -> io::Result<CpuUsed> {
        let client = self_cpu().saturating_sub(self.self_start);
        let server = if self.server.is_empty() {
            None
        } else {
            let mut sum = Duration::ZERO;
            for &(pid, start) in &self.server {
                sum += process_cpu(pid)?.saturating_sub(start);
            }
            Some(sum)
        };
        Ok(CpuUsed { client, server })
    }
}

/// Microseconds of `cpu` per operation (0 when there were no operations).
pub fn us_per_op(cpu: Duration, ops: u64) -> f64 {
    if ops == 0 {
        0.0
    } else {
        cpu.as_secs_f64() * 1e6 / ops as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_the_name() {
        // Fields 14 and 15 (utime, stime) are 250 and 50.
        let stat = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 \
                    12 0 777 123456789 2000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn truncated_stat_is_rejected() {
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2 3"), None);
        assert_eq!(parse_stat_cpu_ticks("no parens at all"), None);
    }

    #[test]
    fn vm_hwm_in_bytes() {
        let status = "Name:\tetcd\nVmPeak:\t  999 kB\nVmHWM:\t   2048 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(2048 * 1024));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
    }

    #[test]
    fn own_process_is_readable_and_cpu_grows() {
        let pid = std::process::id();
        let before = process_cpu(pid).unwrap();
        let meter = CpuMeter::start(&[pid]).unwrap();
        // Burn 50 ms of this process's CPU (measured by getrusage, not the wall clock), so the
        // 10 ms ticks of /proc/<pid>/stat must advance too.
        let cpu0 = self_cpu();
        let mut x = 0u64;
        while self_cpu() - cpu0 < Duration::from_millis(50) {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        let used = meter.stop().unwrap();
        assert!(used.client >= Duration::from_millis(50), "{used:?}");
        let server = used.server.unwrap();
        assert!(server >= Duration::from_millis(20), "{used:?}");
        assert!(process_cpu(pid).unwrap() >= before + server);
        assert!(peak_rss_bytes(pid).unwrap() > 0);
        assert_eq!(max_peak_rss_bytes(&[]).unwrap(), None);
        assert!(max_peak_rss_bytes(&[pid, pid]).unwrap().unwrap() > 0);
        assert_eq!(CpuMeter::start(&[]).unwrap().stop().unwrap().server, None);
    }

    #[test]
    fn missing_process_is_an_error() {
        // pid_max is at most 2^22, so this pid never exists.
        assert!(process_cpu(u32::MAX - 1).is_err());
    }

    #[test]
    fn per_op() {
        assert_eq!(us_per_op(Duration::from_millis(5), 1000), 5.0);
        assert_eq!(us_per_op(Duration::from_millis(5), 0), 0.0);
    }
}
