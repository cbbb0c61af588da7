//! An exclusive lock on a run folder, so two trainings never write into the same one.
//!
//! `{output_dir}/.qtune.lock` is created with `O_CREAT|O_EXCL` (`create_new`) before anything
//! else is written there, and holds the owner's pid, host and start time (JSON). The
//! [`RunLock`] guard removes it on drop (normal exit, error paths, panics). A lock left behind by
//! a process that died (pid not alive on this host: no `/proc/<pid>`) is taken over with a
//! warning; a lock of a live process, or of another host (whose processes we cannot see), is
//! refused with an error naming the folder, pid and host, and how to remove a stale one.
//!
//! Within one process the lock is re-entrant: `train_job` holds it through the final evaluation
//! while the training loop it calls takes it again.
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::TrainError;

pub use crate::files::LOCK_FILE;

/// What the lock file records about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    pub pid: u32,
    pub host: String,
    /// Seconds since the Unix epoch when the lock was taken.
    pub started_unix_s: u64,
    /// Distinguishes two acquisitions by the same pid (only the writer removes the file).
    #[serde(default)]
    pub token: u64,
}

/// Run folders this process holds (canonical lock path → nesting depth).
static HELD: Mutex<Option<HashMap<PathBuf, usize>>> = Mutex::new(None);

/// The held lock; dropping it releases the folder (removes the file when this is the outermost
/// guard of the process and the file is still ours).
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    /// The canonical lock path: this process's registry key.
    key: PathBuf,
    owner: LockOwner,
}

/// This machine's host name (`/proc/sys/kernel/hostname`, `/etc/hostname`, `$HOSTNAME`).
pub fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown-host".into())
}

/// Whether `pid` is a live process of this host. Without `/proc` (not Linux) we cannot tell and
/// answer `true` (the lock is then refused, never stolen).
pub fn pid_alive(pid: u32) -> bool {
    if !Path::new("/proc/self").exists() {
        return true;
    }
    Path::new(&format!("/proc/{pid}")).exists()
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `secs` after the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC` (civil-from-days, proleptic
/// Gregorian calendar).
pub fn utc_time(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The registry key of `dir`'s lock (the folder exists when this is called).
fn key(dir: &Path) -> PathBuf {
    dir.canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .join(LOCK_FILE)
}

impl RunLock {
    /// Takes the lock on `dir` (created if missing).
    pub fn acquire(dir: &Path) -> Result<Self, TrainError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(LOCK_FILE);
        let k = key(dir);
        {
            let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
            let map = held.get_or_insert_with(HashMap::new);
            if let Some(depth) = map.get_mut(&k) {
                // Already ours (an outer call of this process holds it).
                *depth += 1;
                let owner = read_owner(&path).unwrap_or_else(|| LockOwner {
                    pid: std::process::id(),
                    host: host_name(),
                    started_unix_s: now_unix(),
                    token: 0,
                });
                return Ok(Self {
                    path,
                    key: k,
                    owner,
                });
            }
        }
        let owner = LockOwner {
            pid: std::process::id(),
            host: host_name(),
            started_unix_s: now_unix(),
            token: rand::random(),
        };
        // Two attempts: the second after removing a stale lock of a dead process.
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    let text = serde_json::to_string(&owner).unwrap_or_default() + "\n";
                    f.write_all(text.as_bytes())
                        .and_then(|_| f.sync_all())
                        .map_err(io(&path))?;
                    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
                    held.get_or_insert_with(HashMap::new).insert(k.clone(), 1);
                    return Ok(Self {
                        path,
                        key: k,
                        owner,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let Some(other) = read_owner(&path) else {
                        return Err(TrainError::Locked {
                            dir: dir.to_path_buf(),
                            holder: "an unknown process (the lock file is empty or unreadable)"
                                .into(),
                            hint: format!(
                                "if no qtune run uses this folder, delete {}",
                                path.display()
                            ),
                        });
                    };
                    let here = host_name();
                    if other.host == here && !pid_alive(other.pid) {
                        tracing::warn!(
                            lock = %path.display(),
                            pid = other.pid,
                            host = %other.host,
                            "stale run lock: its process is not running any more; taking it over"
                        );
                        match std::fs::remove_file(&path) {
                            Ok(()) => continue,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                            Err(e) => return Err(io(&path)(e)),
                        }
                    }
                    let hint = if other.host == here {
                        format!(
                            "wait for it to finish, stop it, or choose another output_dir \
                             (the lock is removed when that process exits: {})",
                            path.display()
                        )
                    } else {
                        format!(
                            "qtune cannot check a process of another host: if no run is \
                             active on {}, delete {} and retry",
                            other.host,
                            path.display()
                        )
                    };
                    return Err(TrainError::Locked {
                        dir: dir.to_path_buf(),
                        holder: format!(
                            "pid {} on host {} (since {})",
                            other.pid,
                            other.host,
                            utc_time(other.started_unix_s)
                        ),
                        hint,
                    });
                }
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Err(TrainError::Locked {
            dir: dir.to_path_buf(),
            holder: "another process (it took the lock over as we removed a stale one)".into(),
            hint: "retry once it has finished".into(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn owner(&self) -> &LockOwner {
        &self.owner
    }
}

fn read_owner(path: &Path) -> Option<LockOwner> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(text.trim()).ok()
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let k = self.key.clone();
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        let map = held.get_or_insert_with(HashMap::new);
        match map.get_mut(&k) {
            Some(depth) if *depth > 1 => {
                *depth -= 1;
                return;
            }
            _ => {
                map.remove(&k);
            }
        }
        // Remove the file only while it is still ours (never a successor's lock).
        if read_owner(&self.path).is_some_and(|o| o == self.owner) {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(lock = %self.path.display(), "could not remove the run lock: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_lock_refuses_and_releases_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        // A live holder of this host: the file a second process would find (our own pid stands
        // in for "alive"; not registered as held by this process).
        std::fs::create_dir_all(&out).unwrap();
        let other = LockOwner {
            pid: std::process::id(),
            host: host_name(),
            started_unix_s: 1,
            token: 7,
        };
        std::fs::write(out.join(LOCK_FILE), serde_json::to_string(&other).unwrap()).unwrap();
        let err = RunLock::acquire(&out).unwrap_err().to_string();
        assert!(
            err.contains(&out.display().to_string())
                && err.contains(&format!("pid {}", std::process::id()))
                && err.contains(&host_name()),
            "{err}"
        );
        std::fs::remove_file(out.join(LOCK_FILE)).unwrap();

        let lock = RunLock::acquire(&out).unwrap();
        assert!(out.join(LOCK_FILE).is_file());
        // Re-entrant in this process; the inner guard leaves the file.
        drop(RunLock::acquire(&out).unwrap());
        assert!(out.join(LOCK_FILE).is_file());
        drop(lock);
        assert!(!out.join(LOCK_FILE).exists());
    }

    #[test]
    fn utc_time_is_civil_time() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_time(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn stale_lock_of_a_dead_pid_is_taken_over_another_host_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dead = LockOwner {
            // Above Linux's pid_max (4194304): never a live process.
            pid: 4_194_304 + 17,
            host: host_name(),
            started_unix_s: 1,
            token: 1,
        };
        std::fs::write(
            dir.path().join(LOCK_FILE),
            serde_json::to_string(&dead).unwrap(),
        )
        .unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        assert_eq!(lock.owner().pid, std::process::id());
        drop(lock);

        let remote = LockOwner {
            host: format!("{}-elsewhere", host_name()),
            ..dead
        };
        std::fs::write(
            dir.path().join(LOCK_FILE),
            serde_json::to_string(&remote).unwrap(),
        )
        .unwrap();
        let err = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("-elsewhere") && err.contains("delete") && err.contains(LOCK_FILE),
            "{err}"
        );
    }
}
