//! Opaque handles. A handle that C holds is a numeric id, never a pointer
//! the library dereferences: every call looks the id up in the registry of
//! its kind. A stale, freed, foreign or garbage handle is therefore a clean
//! `EBADF`, never a crash, and freeing a handle while another thread uses it
//! cannot free memory under that thread (the registry hands out `Arc`s).

use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::error::{FfiError, FfiResult};

/// Ids are shared by all kinds, so a handle of one kind is never valid as
/// another, and never reused within a process. Starts high so that small
/// integers and NULL-ish values passed by mistake are never valid.
static NEXT_ID: AtomicUsize = AtomicUsize::new(0x1000);

/// The live objects of one kind by handle id.
pub(crate) struct Registry<T> {
    /// What the handle is called in error messages ("file", "cluster").
    what: &'static str,
    live: RwLock<HashMap<usize, Arc<T>>>,
}

impl<T> Registry<T> {
    pub(crate) fn new(what: &'static str) -> Registry<T> {
        Registry {
            what,
            live: RwLock::new(HashMap::new()),
        }
    }

    /// Registers `value` and returns its new id.
    pub(crate) fn insert(&self, value: Arc<T>) -> usize {
        let id = new_id();
        let previous = self.write().insert(id, value);
        assert!(previous.is_none(), "handle id {id:#x} issued twice");
        id
    }

    /// Registers the value `make` builds from its own id; returns the id.
    pub(crate) fn insert_with(&self, make: impl FnOnce(usize) -> T) -> usize {
        let id = new_id();
        let previous = self.write().insert(id, Arc::new(make(id)));
        assert!(previous.is_none(), "handle id {id:#x} issued twice");
        id
    }

    /// The object behind `handle`; `EBADF` if it is not live, `EINVAL` if NULL.
    pub(crate) fn get<H>(&self, handle: *const H, function: &str) -> FfiResult<Arc<T>> {
        let id = check_not_null(handle, self.what, function)?;
        self.read()
            .get(&id)
            .cloned()
            .ok_or_else(|| FfiError::bad_handle(self.what, function))
    }

    /// Unregisters `handle` and returns its object: later lookups fail.
    pub(crate) fn remove<H>(&self, handle: *const H, function: &str) -> FfiResult<Arc<T>> {
        let id = check_not_null(handle, self.what, function)?;
        self.write()
            .remove(&id)
            .ok_or_else(|| FfiError::bad_handle(self.what, function))
    }

    /// Unregisters `handle` only if `allow` says so about its object.
    pub(crate) fn remove_if<H>(
        &self,
        handle: *const H,
        function: &str,
        allow: impl FnOnce(&T) -> FfiResult<()>,
    ) -> FfiResult<Arc<T>> {
        let id = check_not_null(handle, self.what, function)?;
        let mut live = self.write();
        let value = live
            .get(&id)
            .ok_or_else(|| FfiError::bad_handle(self.what, function))?;
        allow(value)?;
        Ok(live.remove(&id).expect("present under the same lock"))
    }

    fn read(&self) -> parking_lot::RwLockReadGuard<'_, HashMap<usize, Arc<T>>> {
        // Critical sections are single map operations: a panic cannot leave
        // the map inconsistent.
        self.live.read()
    }

    fn write(&self) -> parking_lot::RwLockWriteGuard<'_, HashMap<usize, Arc<T>>> {
        self.live.write()
    }
}

fn new_id() -> usize {
    // Steps of 16 keep ids looking like aligned pointers in a debugger.
    NEXT_ID.fetch_add(16, Ordering::Relaxed)
}

fn check_not_null<H>(handle: *const H, what: &str, function: &str) -> FfiResult<usize> {
    if handle.is_null() {
        return Err(FfiError::invalid(format!(
            "{function}: the {what} handle is NULL"
        )));
    }
    Ok(handle as usize)
}

/// The C value of handle `id`.
pub(crate) fn to_handle<H>(id: usize) -> *mut H {
    std::ptr::without_provenance_mut(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_of_unknown_freed_and_null_handles_fail_cleanly() {
        let registry: Registry<u32> = Registry::new("thing");
        let id = registry.insert(Arc::new(7));
        let handle: *const u8 = to_handle(id);
        assert_eq!(*registry.get(handle, "f").unwrap(), 7);
        assert_eq!(
            registry
                .get(to_handle::<u8>(id + 16), "f")
                .unwrap_err()
                .errno,
            libc::EBADF
        );
        assert_eq!(
            registry.get(std::ptr::null::<u8>(), "f").unwrap_err().errno,
            libc::EINVAL
        );
        registry.remove(handle, "f").unwrap();
        assert_eq!(registry.get(handle, "f").unwrap_err().errno, libc::EBADF);
        assert_eq!(registry.remove(handle, "f").unwrap_err().errno, libc::EBADF);
    }

    #[test]
    fn ids_are_never_reused_across_kinds() {
        let a: Registry<u32> = Registry::new("a");
        let b: Registry<u32> = Registry::new("b");
        let id = a.insert(Arc::new(1));
        assert_eq!(
            b.get(to_handle::<u8>(id), "f").unwrap_err().errno,
            libc::EBADF
        );
        assert_ne!(b.insert(Arc::new(2)), id);
    }
}
