//! Making a local worker honestly slower for benches: a CPU quota on its
//! process through a cgroup (Linux, as root), so that it gets a fixed share
//! of one core in every 10 ms however idle the machine is. Fewer threads
//! would not do it on a machine with few cores; a quota scales compute
//! time and leaves the link alone.

use std::path::{Path, PathBuf};

/// Scheduling period of the quota: short, so a step never waits long for
/// the next slice.
const PERIOD_US: u64 = 10_000;

/// Why a throttle could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ThrottleError {
    /// No writable cgroup cpu controller (not Linux, not root, or none mounted).
    #[error("no writable cgroup cpu controller at {0} (needs Linux and root)")]
    NoCgroup(String),
    /// The factor is below 1 or not finite.
    #[error("slow-down factor {0} must be a number of at least 1")]
    BadFactor(f64),
    /// Writing the cgroup's files failed.
    #[error("setting up cgroup {path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// A CPU quota on one process: `1/factor` of one core. Removed (the process
/// moved back and the cgroup deleted) on drop.
#[derive(Debug)]
pub struct CpuThrottle {
    dir: PathBuf,
    root: PathBuf,
    pid: u32,
}

impl CpuThrottle {
    /// Puts process `pid` in a new cgroup limited to `1/factor` of a core.
    pub fn new(pid: u32, factor: f64) -> Result<CpuThrottle, ThrottleError> {
        if !factor.is_finite() || factor < 1.0 {
            return Err(ThrottleError::BadFactor(factor));
        }
        // cgroup v2 (cpu.max) or v1 (cpu.cfs_quota_us), whichever is here.
        let v2 = Path::new("/sys/fs/cgroup");
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let (root, is_v2) = if v2.join("cgroup.controllers").is_file() {
            (v2, true)
        } else if v1.join("cpu.cfs_period_us").is_file() {
            (v1, false)
        } else {
            return Err(ThrottleError::NoCgroup(v2.display().to_string()));
        };
        let dir = root.join(format!("shardline-slow-{pid}"));
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| ThrottleError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let quota = ((PERIOD_US as f64) / factor).max(1000.0) as u64;
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(io(&p))
        };
        let set = if is_v2 {
            write("cpu.max", format!("{quota} {PERIOD_US}"))
        } else {
            write("cpu.cfs_period_us", PERIOD_US.to_string())
                .and_then(|()| write("cpu.cfs_quota_us", quota.to_string()))
        };
        let t = CpuThrottle {
            dir: dir.clone(),
            root: root.to_path_buf(),
            pid,
        };
        set?;
        write("cgroup.procs", pid.to_string())?;
        Ok(t)
    }
}

impl Drop for CpuThrottle {
    fn drop(&mut self) {
        // Back to the root group (fails harmlessly when it has exited),
        // then the empty group can go.
        let _ = std::fs::write(self.root.join("cgroup.procs"), self.pid.to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}
