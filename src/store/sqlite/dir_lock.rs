//! One process per data directory: an exclusive OS lock (flock) on
//! `jobvisor.lock` in it, taken before the database file is opened and
//! held for the server's life. The kernel drops it with the process, so a
//! SIGKILLed server leaves no stale lock; the file's text (pid, start) only
//! names the holder in the refusal. The file is opened close-on-exec, so
//! the programs of `exec` items do not inherit the lock.

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Seek as _, Write as _},
    path::{Path, PathBuf},
};

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "jobvisor.lock";

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DirLockError {
    #[error(
        "the data directory {} is in use by another jobvisor server ({holder}): stop it \
         first, or give this one another --data-dir (JOBVISOR_DATA_DIR)",
        .dir.display()
    )]
    InUse { dir: PathBuf, holder: String },
    #[error("cannot lock the data directory {}: {source}", .dir.display())]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// The data directory's lock, held until dropped or the process ends.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Locks `dir` (created if missing) for this process, `since` its
    /// start; refuses at once if another process holds it.
    pub fn take(dir: &Path, since: chrono::DateTime<chrono::Utc>) -> Result<DirLock, DirLockError> {
        let io = |source| DirLockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = holder_text(&text);
                return Err(DirLockError::InUse {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let text = format!(
            "pid={} since={}\n",
            std::process::id(),
            since.format("%Y-%m-%dT%H:%M:%SZ")
        );
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(text.as_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(io)?;
        Ok(DirLock { _file: file })
    }
}

/// "pid N, since T" from the lock file's `pid=N since=T`.
fn holder_text(text: &str) -> String {
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
    };
    match (field("pid"), field("since")) {
        (Some(pid), Some(since)) => format!("pid {pid}, since {since}"),
        (Some(pid), None) => format!("pid {pid}"),
        _ => "pid not known yet: it is starting".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_directory_is_refused_naming_the_holder_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let since = chrono::Utc::now();
        let first = DirLock::take(dir.path(), since).unwrap();
        let refused = DirLock::take(dir.path(), since).unwrap_err().to_string();
        assert!(
            refused.contains(&format!("pid {}", std::process::id())),
            "{refused}"
        );
        assert!(
            refused.contains(&dir.path().display().to_string()),
            "{refused}"
        );
        drop(first);
        DirLock::take(dir.path(), since).unwrap();
    }

    #[test]
    fn the_holder_is_read_from_the_lock_file() {
        assert_eq!(
            holder_text("pid=42 since=2026-12-07T01:47:02Z\n"),
            "pid 42, since 2026-12-07T01:47:02Z"
        );
        assert_eq!(holder_text(""), "pid not known yet: it is starting");
    }
}
