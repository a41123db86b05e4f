//! One job per run directory: RUN_DIR/train.lock is created with O_EXCL and holds the owner's
//! pid; it is removed when the [`RunLock`] drops. A second job finds it and stops with a message
//! naming the file and the pid. A lock whose pid no longer runs (a killed job) is stale: it is
//! replaced, and the caller is told so. (A pid reused by an unrelated process looks alive; the
//! message says how to remove the file by hand.)

use std::io::Write;
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "train.lock";

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Whether process `pid` exists (signal 0 checks without sending; EPERM still means it exists).
fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only performs the existence and permission check.
    let result = unsafe { kill(pid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(1)
}

/// The held lock; dropping it removes the file.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock of `run_dir` (creating the directory). `Ok((lock, Some(pid)))` when a
    /// stale lock of dead process `pid` was replaced.
    pub fn acquire(run_dir: &Path) -> Result<(RunLock, Option<i32>), String> {
        std::fs::create_dir_all(run_dir)
            .map_err(|e| format!("{}: cannot create run directory: {e}", run_dir.display()))?;
        let path = run_dir.join(LOCK_FILE);
        let mut stale = None;
        // Two tries: the second follows the removal of a stale lock.
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut file) => {
                    writeln!(file, "{}", std::process::id())
                        .map_err(|e| format!("{}: cannot write lock file: {e}", path.display()))?;
                    crate::signals::set_lock_file(Some(&path));
                    return Ok((RunLock { path }, stale));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let owner = text.trim().parse::<i32>().ok();
                    match owner {
                        Some(pid) if process_alive(pid) => {
                            return Err(format!(
                                "run directory {} is in use by another train job (pid {pid}, lock file {}); \
                                 wait for it, use another --run-dir, or delete the lock file if that \
                                 process is not a train job",
                                run_dir.display(),
                                path.display()
                            ))
                        }
                        // Dead owner, or a lock file cut short by a crash while it was written.
                        _ => {
                            stale = Some(owner.unwrap_or(0));
                            std::fs::remove_file(&path).or_else(|e| {
                                if e.kind() == std::io::ErrorKind::NotFound {
                                    Ok(())
                                } else {
                                    Err(format!(
                                        "{}: cannot remove stale lock file: {e}",
                                        path.display()
                                    ))
                                }
                            })?;
                        }
                    }
                }
                Err(e) => return Err(format!("{}: cannot create lock file: {e}", path.display())),
            }
        }
        Err(format!(
            "{}: another job keeps taking the lock of this run directory",
            path.display()
        ))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        crate::signals::set_lock_file(None);
        // Best effort: a lock left behind is detected as stale by the next run.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let base = std::env::var_os("TEST_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("kormo-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn second_holder_is_refused_until_release() {
        let dir = scratch("held");
        let (lock, stale) = RunLock::acquire(&dir).unwrap();
        assert_eq!(stale, None);
        let text = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        let err = RunLock::acquire(&dir).unwrap_err();
        assert!(
            err.contains("in use by another train job")
                && err.contains(&format!("pid {}", std::process::id()))
                && err.contains(LOCK_FILE),
            "{err}"
        );
        drop(lock);
        assert!(!dir.join(LOCK_FILE).exists());
        RunLock::acquire(&dir).unwrap();
    }

    #[test]
    fn lock_of_a_dead_process_is_replaced() {
        let dir = scratch("stale");
        std::fs::create_dir_all(&dir).unwrap();
        // A process that has exited (and been reaped) has a pid nobody holds.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id() as i32;
        child.wait().unwrap();
        assert!(!process_alive(dead));
        std::fs::write(dir.join(LOCK_FILE), format!("{dead}\n")).unwrap();
        let (_lock, stale) = RunLock::acquire(&dir).unwrap();
        assert_eq!(stale, Some(dead));
        // A torn lock file (no pid) is stale too.
        drop(_lock);
        std::fs::write(dir.join(LOCK_FILE), "").unwrap();
        assert_eq!(RunLock::acquire(&dir).unwrap().1, Some(0));
    }
}
