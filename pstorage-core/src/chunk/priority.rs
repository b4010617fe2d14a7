//! The CPU priority of the journal keeper's thread.
//!
//! A trim's applies and the writeback of the chunk files it syncs take CPU
//! from the data path that fills the journal: on a busy 2-core machine, at
//! the same priority, they doubled the p99 latency of 4 KiB random writes.
//! So the keeper runs at the lowest priority (nice 19) while the journal
//! has room, and at the normal one once half of it is in use, when writers
//! may soon wait for space: background work must not starve on a host
//! whose CPUs are busy with other things (virtual machines).
//!
//! Raising a thread's priority back needs `CAP_SYS_NICE` or a high enough
//! `RLIMIT_NICE`. Where a probe finds the process cannot, the keeper stays
//! at the normal priority throughout.

/// The nice value of the keeper while the journal has room.
pub(super) const BACKGROUND_NICE: i32 = 19;

/// The calling thread's priority, lowered while the keeper is not needed
/// urgently.
pub(super) struct KeeperPriority {
    /// The thread's nice value when this was made.
    normal: i32,
    /// The process may raise a thread's priority back to `normal`.
    adjustable: bool,
    /// The nice value set on the thread.
    current: i32,
}

impl KeeperPriority {
    /// For the calling thread (left at its priority until [`set`](Self::set)).
    pub(super) fn new() -> KeeperPriority {
        let normal = thread_nice().unwrap_or(0);
        KeeperPriority {
            normal,
            adjustable: normal < BACKGROUND_NICE && can_raise_back(normal),
            current: normal,
        }
    }

    /// Runs the calling thread in the background, unless `urgent` (or the
    /// priority cannot be raised back).
    pub(super) fn set(&mut self, urgent: bool) {
        let nice = if urgent || !self.adjustable {
            self.normal
        } else {
            BACKGROUND_NICE
        };
        if nice != self.current {
            match set_thread_nice(nice) {
                Ok(()) => self.current = nice,
                Err(e) => {
                    tracing::warn!(nice, error = %e, "cannot change the journal thread's priority");
                    // Never stay below the normal priority on an error.
                    self.adjustable = false;
                }
            }
        }
    }

    /// The nice value set on the thread.
    #[cfg(test)]
    fn nice(&self) -> i32 {
        self.current
    }
}

/// Whether a thread of this process may lower its priority and then raise
/// it back to `normal`: tried on a thread of its own, which then ends.
fn can_raise_back(normal: i32) -> bool {
    std::thread::Builder::new()
        .name("pstorage-nice".into())
        .spawn(move || set_thread_nice(BACKGROUND_NICE).is_ok() && set_thread_nice(normal).is_ok())
        .ok()
        .and_then(|probe| probe.join().ok())
        .unwrap_or(false)
}

/// The calling thread's nice value.
fn thread_nice() -> std::io::Result<i32> {
    // SAFETY: errno is the calling thread's; getpriority takes no pointers
    // and may return -1 as a value, so errno tells an error apart.
    unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        if nice == -1 && *libc::__errno_location() != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(nice)
    }
}

/// Sets the calling thread's nice value (on Linux, a thread's own).
fn set_thread_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: setpriority takes no pointers; who = 0 names the caller.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice() -> i32 {
        thread_nice().unwrap()
    }

    #[test]
    fn the_keeper_runs_in_the_background_until_it_is_urgent() {
        let normal = nice();
        std::thread::spawn(move || {
            let mut priority = KeeperPriority::new();
            priority.set(false);
            if !priority.adjustable {
                // Not allowed to raise it back: it stays normal.
                assert_eq!((priority.nice(), nice()), (normal, normal));
                return;
            }
            assert_eq!(
                (priority.nice(), nice()),
                (BACKGROUND_NICE, BACKGROUND_NICE)
            );
            priority.set(true);
            assert_eq!((priority.nice(), nice()), (normal, normal));
            priority.set(false);
            assert_eq!(nice(), BACKGROUND_NICE);
        })
        .join()
        .unwrap();
        // Other threads keep their own priority.
        assert_eq!(nice(), normal);
    }
}
