//! A few megabytes of the data directory's filesystem held back (`{data_dir}/.reserve`, a
//! file with its blocks allocated), so that the server can still record what it must when a
//! tenant has filled the disk: stopping and forgetting that very tenant, first of all.
//!
//! When a state store write fails for lack of space, the reserve is given back and the write
//! tried once more; the reserve is taken again, at most every 10 s, once writes succeed and
//! there is room. Without room even then, the write fails with SQLite's "database or disk is
//! full", which the API passes on.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const SIZE: i64 = 4 * 1024 * 1024;
const RETRY: Duration = Duration::from_secs(10);

pub struct Reserve {
    path: PathBuf,
    held: AtomicBool,
    last_try: Mutex<Option<Instant>>,
}

impl Reserve {
    /// The reserve at `path`, taken now if there is room.
    pub fn new(path: PathBuf) -> Self {
        let r = Self {
            held: AtomicBool::new(std::fs::metadata(&path).is_ok_and(|m| m.len() == SIZE as u64)),
            path,
            last_try: Mutex::default(),
        };
        r.take();
        r
    }

    /// Gives the space back; whether there was any to give.
    pub fn release(&self) -> bool {
        if !self.held.swap(false, Ordering::AcqRel) {
            return false;
        }
        let _ = std::fs::remove_file(&self.path);
        tracing::warn!(path = %self.path.display(), "data_dir's disk is full: the server's reserve is given back for its own records; free space there");
        true
    }

    /// Takes the reserve if it is not held and there is room (at most every 10 s).
    pub fn take(&self) {
        if self.held.load(Ordering::Acquire) {
            return;
        }
        let mut last = self.last_try.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < RETRY) {
            return;
        }
        *last = Some(Instant::now());
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.path);
        let taken = file.is_ok_and(|f| {
            // SAFETY: posix_fallocate(3) on a descriptor this function owns.
            unsafe { libc::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, SIZE) == 0 }
        });
        if taken {
            self.held.store(true, Ordering::Release);
        } else {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_given_back_and_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".reserve");
        let r = Reserve::new(path.clone());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SIZE as u64);
        assert!(r.release());
        assert!(!path.exists());
        assert!(!r.release(), "nothing left to give");
        r.take(); // too soon after the last try
        assert!(!path.exists());
        *r.last_try.lock().unwrap() = None;
        r.take();
        assert!(path.exists());
    }
}
