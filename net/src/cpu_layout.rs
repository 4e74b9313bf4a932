//! `--cpu-layout`: which CPUs the node's roles run on, how many front-end workers there are, and
//! how large a committed batch the raft thread applies itself (engine/docs/design.md, "CPU
//! layout").
//!
//! Accepted values:
//! - `auto` (default): nothing pinned, the OS schedules every role; one front-end runtime per
//!   available CPU (runtimes.rs); small batches applied on the raft thread.
//! - `pinned`: raft core and WAL flush thread on CPU 0, apply thread on the last CPU, front-end
//!   runtime `i` on CPU `i` (modulo the CPU count).
//! - a comma-separated list of `role=value`, for example `raft=0,wal=0,apply=1,front=0-1`:
//!   `raft`, `apply`, `wal` take one CPU; `front` takes CPUs as `N`, `N-M` or `N+M+…`: front-end
//!   runtime `i` is pinned to the `i % len`-th of them and the runtimes' blocking pools are
//!   restricted to them; `workers` sets the number of front-end runtimes (default: the number
//!   of CPUs in `front`, or all CPUs);
//!   `inline-apply` sets the largest batch of committed entries the raft thread applies itself
//!   (0: every batch goes to the apply thread); `drive=on` lets a proposing front-end thread
//!   run an idle lone member's raft core itself instead of waking the raft thread (default
//!   `off`); `peer-drive=on` lets a peer reader thread run a parked raft core itself (a
//!   follower's append and the leader's acknowledgements then need no wake-up of the raft
//!   thread; default `off`: it costs throughput under load); `peer-drive=leader` does so only
//!   on the leader (acknowledgements; a follower's reader never writes the WAL itself).
//!   Roles not named are not pinned.

use ringkv_engine::ThreadOptions;

/// A parsed `--cpu-layout`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuLayout {
    /// Placement of the engine's threads and the inline-apply limit.
    pub threads: ThreadOptions,
    /// CPUs the front-end runtimes are pinned to, one each in turn (`None`: not pinned).
    pub front: Option<Vec<usize>>,
    /// Front-end runtimes, one thread each (`None`: one per available CPU).
    pub front_workers: Option<usize>,
}

impl CpuLayout {
    /// Parses `spec` for a machine with `ncpus` CPUs; every CPU named must exist.
    pub fn parse(spec: &str, ncpus: usize) -> Result<CpuLayout, String> {
        let ncpus = ncpus.max(1);
        let mut layout = CpuLayout::default();
        match spec.trim() {
            "auto" => return Ok(layout),
            "pinned" => {
                layout.threads.raft_cpu = Some(0);
                layout.threads.wal_cpu = Some(0);
                layout.threads.apply_cpu = Some(ncpus - 1);
                layout.front = Some((0..ncpus).collect());
                return Ok(layout);
            }
            _ => {}
        }
        let err = |why: String| format!("--cpu-layout {spec:?}: {why}");
        let cpu = |v: &str| -> Result<usize, String> {
            let n: usize = v
                .trim()
                .parse()
                .map_err(|_| err(format!("{v:?} is not a CPU number")))?;
            if n >= ncpus {
                return Err(err(format!(
                    "CPU {n} does not exist (this machine has {ncpus})"
                )));
            }
            Ok(n)
        };
        for part in spec.split(',') {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                err(format!(
                    "{part:?} is not role=value (expected auto, pinned, or e.g. raft=0,apply=1,front=0-1)"
                ))
            })?;
            match key.trim() {
                "raft" => layout.threads.raft_cpu = Some(cpu(value)?),
                "apply" => layout.threads.apply_cpu = Some(cpu(value)?),
                "wal" => layout.threads.wal_cpu = Some(cpu(value)?),
                "front" => {
                    let mut set = Vec::new();
                    for item in value.split('+') {
                        match item.split_once('-') {
                            Some((a, b)) => {
                                let (a, b) = (cpu(a)?, cpu(b)?);
                                if a > b {
                                    return Err(err(format!("empty CPU range {item:?}")));
                                }
                                set.extend(a..=b);
                            }
                            None => set.push(cpu(item)?),
                        }
                    }
                    set.sort_unstable();
                    set.dedup();
                    layout.front = Some(set);
                }
                "workers" => {
                    let n: usize = value
                        .trim()
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| err(format!("workers={value:?}: expected a count ≥ 1")))?;
                    layout.front_workers = Some(n);
                }
                "inline-apply" => {
                    layout.threads.inline_apply_max = value.trim().parse().map_err(|_| {
                        err(format!("inline-apply={value:?}: expected a batch size"))
                    })?;
                }
                "drive" => {
                    layout.threads.drive = match value.trim() {
                        "on" => true,
                        "off" => false,
                        v => return Err(err(format!("drive={v:?}: expected on or off"))),
                    };
                }
                "peer-drive" => {
                    (
                        layout.threads.peer_drive,
                        layout.threads.peer_drive_leader_only,
                    ) = match value.trim() {
                        "on" => (true, false),
                        "leader" => (true, true),
                        "off" => (false, false),
                        v => {
                            return Err(err(format!(
                                "peer-drive={v:?}: expected on, leader or off"
                            )));
                        }
                    };
                }
                other => {
                    return Err(err(format!(
                        "unknown role {other:?} (roles: raft, apply, wal, front, workers, inline-apply, drive, peer-drive)"
                    )));
                }
            }
        }
        Ok(layout)
    }

    /// Front-end runtimes to start.
    pub fn workers(&self) -> usize {
        self.front_workers
            .or_else(|| self.front.as_ref().map(Vec::len))
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(usize::from)
                    .unwrap_or(1)
            })
            .max(1)
    }
}

/// Restricts the calling thread to `cpus` (`sched_setaffinity` with a CPU set).
pub fn restrict_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: `cpu_set_t` is plain bits; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: `c` is below CPU_SETSIZE, the number of bits in `set`.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is a valid, initialised cpu_set_t of the size
    // passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_pins_nothing_and_applies_small_batches_inline() {
        let l = CpuLayout::parse("auto", 2).unwrap();
        assert_eq!(l.threads, ThreadOptions::default());
        assert!(l.threads.inline_apply_max > 0);
        assert_eq!(l.front, None);
    }

    #[test]
    fn pinned_puts_raft_and_wal_on_0_and_apply_on_the_last_cpu() {
        let l = CpuLayout::parse("pinned", 4).unwrap();
        assert_eq!(l.threads.raft_cpu, Some(0));
        assert_eq!(l.threads.wal_cpu, Some(0));
        assert_eq!(l.threads.apply_cpu, Some(3));
        assert_eq!(l.front, Some(vec![0, 1, 2, 3]));
        assert_eq!(l.workers(), 4);
    }

    #[test]
    fn explicit_roles_sets_and_counts() {
        let l = CpuLayout::parse("raft=1,apply=0,front=0-1+3,workers=3,inline-apply=0", 4).unwrap();
        assert_eq!(l.threads.raft_cpu, Some(1));
        assert_eq!(l.threads.apply_cpu, Some(0));
        assert_eq!(l.threads.wal_cpu, None);
        assert_eq!(l.threads.inline_apply_max, 0);
        assert_eq!(l.front, Some(vec![0, 1, 3]));
        assert_eq!(l.workers(), 3);
        assert!(!l.threads.drive);
        assert_eq!(CpuLayout::parse("front=1", 2).unwrap().workers(), 1);
        assert!(CpuLayout::parse("drive=on", 2).unwrap().threads.drive);
        assert!(!CpuLayout::parse("drive=off", 2).unwrap().threads.drive);
        assert!(!l.threads.peer_drive);
        assert!(
            CpuLayout::parse("peer-drive=on", 2)
                .unwrap()
                .threads
                .peer_drive
        );
        assert!(
            !CpuLayout::parse("peer-drive=off", 2)
                .unwrap()
                .threads
                .peer_drive
        );
        let leader = CpuLayout::parse("peer-drive=leader", 2).unwrap().threads;
        assert!(leader.peer_drive && leader.peer_drive_leader_only);
        let on = CpuLayout::parse("peer-drive=on", 2).unwrap().threads;
        assert!(!on.peer_drive_leader_only);
        let e = CpuLayout::parse("peer-drive=follower", 2).unwrap_err();
        assert!(e.contains("expected on, leader or off"), "{e}");
    }

    #[test]
    fn bad_layouts_are_refused_with_the_reason() {
        let e = CpuLayout::parse("raft=2", 2).unwrap_err();
        assert!(
            e.contains("CPU 2 does not exist (this machine has 2)"),
            "{e}"
        );
        let e = CpuLayout::parse("gpu=0", 2).unwrap_err();
        assert!(e.contains("unknown role \"gpu\""), "{e}");
        let e = CpuLayout::parse("fast", 2).unwrap_err();
        assert!(e.contains("is not role=value"), "{e}");
        let e = CpuLayout::parse("front=1-0", 2).unwrap_err();
        assert!(e.contains("empty CPU range"), "{e}");
        let e = CpuLayout::parse("drive=maybe", 2).unwrap_err();
        assert!(e.contains("expected on or off"), "{e}");
        let e = CpuLayout::parse("workers=0", 2).unwrap_err();
        assert!(e.contains("expected a count"), "{e}");
    }

    #[test]
    fn restricting_to_an_existing_cpu_works() {
        // Run on a scratch thread so the test runner's thread keeps its affinity.
        std::thread::spawn(|| {
            restrict_current_thread(&[0]).unwrap();
            assert!(restrict_current_thread(&[1 << 20]).is_err());
        })
        .join()
        .unwrap();
    }
}
