//! The POSIX namespace in C: symbolic and hard links, FIFOs, sockets and
//! device nodes, `chmod`/`chown`/`utimensat`, `renameat2`'s flags and
//! extended attributes, each one MDS call on a cluster path. Nodes are
//! created owned by the calling process's effective uid and gid, as a
//! local file system would own them (the cluster key is the only
//! credential: any SDK user may set any owner with `pstorage_chown`).

use std::ffi::{c_char, c_int, c_void};

use pstorage_core::types::{
    NewNode, NodeSpec, Perms, RenameFlags, TimeChange, Timestamp, XattrSet,
};

use crate::args::{buffer, c_str, out_ptr};
use crate::cluster::{check_flags, CLUSTERS};
use crate::error::{run_int, run_size, FfiError, FfiResult};
use crate::types::{pstorage_cluster_t, pstorage_stat_t};

/// `pstorage_rename2` flag: fail with `-EEXIST` if `to` exists.
pub const PSTORAGE_RENAME_NOREPLACE: u32 = 1;
/// `pstorage_rename2` flag: swap `from` and `to` atomically (both exist).
pub const PSTORAGE_RENAME_EXCHANGE: u32 = 2;
/// `pstorage_chown`: leave the owner or the group as it is.
pub const PSTORAGE_OWNER_UNCHANGED: u32 = u32::MAX;

/// The calling process's effective uid and gid with `mode`.
fn perms(mode: u32) -> Perms {
    Perms {
        mode: mode & 0o7777,
        // SAFETY: geteuid and getegid always succeed and touch no memory.
        uid: unsafe { libc::geteuid() },
        // SAFETY: as above.
        gid: unsafe { libc::getegid() },
    }
}

/// Copies `data` into the caller's buffer of `size` bytes: its length when
/// `size` is 0, `-ERANGE` when it does not fit.
fn copy_out(data: &[u8], out: *mut c_void, size: usize, f: &str) -> FfiResult<usize> {
    if size == 0 {
        return Ok(data.len());
    }
    buffer(out.cast_const(), size, "buffer", f)?;
    if data.len() > size {
        return Err(FfiError::new(
            libc::ERANGE,
            format!("{f}: {} bytes do not fit the buffer of {size}", data.len()),
        ));
    }
    // SAFETY: `out` holds `size` >= `data.len()` bytes (the caller's
    // contract), and does not overlap `data`, which is ours.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), out.cast::<u8>(), data.len()) };
    Ok(data.len())
}

/// Creates the symbolic link `path` pointing at `target` (any non-empty
/// text; the cluster never follows it).
///
/// Thread-safety: any thread. Blocking: yes (one MDS round trip).
///
/// Returns 0 or:
/// - `-EINVAL`: NULL or malformed arguments;
/// - `-EBADF`: `cluster` is not an open cluster handle;
/// - `-EEXIST`: `path` exists;
/// - `-ENOENT`: the parent of `path` is missing, or `target` is empty;
/// - `-ENAMETOOLONG`: `target` is longer than 4095 bytes;
/// - `-EAGAIN`, `-ETIMEDOUT`, `-EIO`, `-EDEADLK`: as `pstorage_mkdir`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_symlink(
    cluster: *mut pstorage_cluster_t,
    target: *const c_char,
    path: *const c_char,
) -> c_int {
    const F: &str = "pstorage_symlink";
    run_int(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes NUL-terminated strings or NULL.
        let (target, path) = unsafe { (c_str(target, "target", F)?, c_str(path, "path", F)?) };
        let node = NewNode {
            spec: NodeSpec::Symlink {
                target: target.to_string(),
            },
            perms: perms(0o777),
        };
        cluster.block_on(F, cluster.client.make_node(path, node))??;
        Ok(0)
    })
}

/// Copies the target of the symbolic link `path` into `buf` (`size` bytes,
/// no NUL added, truncated to `size` as readlink(2) does).
///
/// Ownership: the caller owns `buf`. Thread-safety: any thread. Blocking:
/// yes (one MDS round trip).
///
/// Returns the number of bytes copied, or:
/// - `-EINVAL`: NULL arguments, `size` 0, `path` is not a symbolic link;
/// - `-ENOENT`, `-EBADF`, `-EAGAIN`, `-ETIMEDOUT`, `-EIO`, `-EDEADLK`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_readlink(
    cluster: *mut pstorage_cluster_t,
    path: *const c_char,
    buf: *mut c_char,
    size: usize,
) -> libc::ssize_t {
    const F: &str = "pstorage_readlink";
    run_size(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let path = unsafe { c_str(path, "path", F) }?;
        out_ptr(buf, "buf", F)?;
        if size == 0 {
            return Err(FfiError::invalid(format!("{F}: the buffer is empty")));
        }
        let target = cluster.block_on(F, cluster.client.readlink(path))??;
        let n = target.len().min(size);
        copy_out(&target.as_bytes()[..n], buf.cast(), size, F)
    })
}

/// Gives the node at `from` (not a directory) the further name `to`.
///
/// Thread-safety: any thread. Blocking: yes (one MDS round trip).
///
/// Returns 0 or:
/// - `-EINVAL`: NULL or malformed paths;
/// - `-EBADF`: `cluster` is not an open cluster handle;
/// - `-EEXIST`: `to` exists;
/// - `-ENOENT`: `from` or the parent of `to` does not exist;
/// - `-EACCES`: `from` is a directory;
/// - `-EMLINK`: `from` has the most names allowed;
/// - `-EAGAIN`, `-ETIMEDOUT`, `-EIO`, `-EDEADLK`: as `pstorage_mkdir`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_link(
    cluster: *mut pstorage_cluster_t,
    from: *const c_char,
    to: *const c_char,
) -> c_int {
    const F: &str = "pstorage_link";
    run_int(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes NUL-terminated strings or NULL.
        let (from, to) = unsafe { (c_str(from, "from", F)?, c_str(to, "to", F)?) };
        cluster.block_on(F, cluster.client.link(from, to))??;
        Ok(0)
    })
}

/// Creates the node `path` as mknod(2) does: `mode` is `S_IFREG`,
/// `S_IFIFO`, `S_IFSOCK`, `S_IFCHR` or `S_IFBLK` with the permission bits;
/// `rdev` is a device's number.
///
/// Thread-safety: any thread. Blocking: yes (one MDS round trip).
///
/// Returns 0 or:
/// - `-EINVAL`: NULL or malformed arguments, another file type in `mode`;
/// - `-EEXIST`, `-ENOENT`, `-ENOTDIR`, `-EBADF`, `-EAGAIN`, `-ETIMEDOUT`,
///   `-EIO`, `-EDEADLK`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_mknod(
    cluster: *mut pstorage_cluster_t,
    path: *const c_char,
    mode: u32,
    rdev: u64,
) -> c_int {
    const F: &str = "pstorage_mknod";
    run_int(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let path = unsafe { c_str(path, "path", F) }?;
        let spec = match mode & libc::S_IFMT {
            0 | libc::S_IFREG => NodeSpec::File,
            libc::S_IFIFO => NodeSpec::Fifo,
            libc::S_IFSOCK => NodeSpec::Socket,
            libc::S_IFCHR => NodeSpec::CharDevice { rdev },
            libc::S_IFBLK => NodeSpec::BlockDevice { rdev },
            other => {
                return Err(FfiError::invalid(format!(
                    "{F}: file type {other:#o} is not one mknod creates"
                )))
            }
        };
        let node = NewNode {
            spec,
            perms: perms(mode),
        };
        cluster.block_on(F, cluster.client.make_node(path, node))??;
        Ok(0)
    })
}

/// Sets the permission bits (07777) of `path`.
///
/// Thread-safety: any thread. Blocking: yes (one MDS round trip).
///
/// Returns 0 or `-EINVAL` (bits outside 07777, NULL arguments), `-ENOENT`,
/// `-EBADF`, `-EAGAIN`, `-ETIMEDOUT`, `-EIO`, `-EDEADLK`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_chmod(
    cluster: *mut pstorage_cluster_t,
    path: *const c_char,
    mode: u32,
) -> c_int {
    const F: &str = "pstorage_chmod";
    run_int(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let path = unsafe { c_str(path, "path", F) }?;
        cluster.block_on(F, cluster.client.chmod(path, mode))??;
        Ok(0)
    })
}

/// Sets the owner and/or group of `path` (`PSTORAGE_OWNER_UNCHANGED`
/// leaves one as it is). Clears set-user-id (and set-group-id with group
/// execute) of a non-directory, as Linux does.
///
/// Thread-safety: any thread. Blocking: yes (one MDS round trip).
///
/// Returns 0 or `-EINVAL`, `-ENOENT`, `-EBADF`, `-EAGAIN`, `-ETIMEDOUT`,
/// `-EIO`, `-EDEADLK`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_chown(
    cluster: *mut pstorage_cluster_t,
    path: *const c_char,
    uid: u32,
    gid: u32,
) -> c_int {
    const F: &str = "pstorage_chown";
    run_int(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let path = unsafe { c_str(path, "path", F) }?;
        let given = |id: u32| (id != PSTORAGE_OWNER_UNCHANGED).then_some(id);
        cluster.block_on(F, cluster.client.chown(path, given(uid), given(gid)))??;
        Ok(0)
    })
}

/// The change of one time from utimensat(2)'s `timespec`.
fn time_change(t: &libc::timespec, f: &str) -> FfiResult<Option<TimeChange>> {
    match t.tv_nsec {
        libc::UTIME_OMIT => Ok(None),
        libc::UTIME_NOW => Ok(Some(TimeChange::Now)),
        n if (0..1_000_000_000).contains(&n) => Ok(Some(TimeChange::At(Timestamp {
            sec: t.tv_sec,
            nsec: n as u32,
        }))),
        n => Err(FfiError::invalid(format!(
            "{f}: tv_nsec {n} is out of range"
        ))),
    }
}

/// Sets the access and modification times of `path` as utimensat(2) does:
/// `times[0]` is the access time, `times[1]` the modification time, each
/// with `UTIME_NOW` or `UTIME_OMIT` in `tv_nsec`; NULL sets both to now.
///
/// Thread-safety: any thread. Blocking: yes (one MDS round trip).
///
/// Returns 0 or `-EINVAL` (a bad `tv_nsec`, NULL arguments), `-ENOENT`,
/// `-EBADF`, `-EAGAIN`, `-ETIMEDOUT`, `-EIO`, `-EDEADLK`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_utimens(
    cluster: *mut pstorage_cluster_t,
    path: *const c_char,
    times: *const libc::timespec,
) -> c_int {
    const F: &str = "pstorage_utimens";
    run_int(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let path = unsafe { c_str(path, "path", F) }?;
        let (atime, mtime) = if times.is_null() {
            (Some(TimeChange::Now), Some(TimeChange::Now))
        } else {
            // SAFETY: a non-NULL `times` points at two timespecs (the
            // caller's contract, as utimensat's).
            let t = unsafe { std::slice::from_raw_parts(times, 2) };
            (time_change(&t[0], F)?, time_change(&t[1], F)?)
        };
        cluster.block_on(F, cluster.client.utimes(path, atime, mtime))??;
        Ok(0)
    })
}

/// Renames `from` to `to` with renameat2(2)'s flags:
/// `PSTORAGE_RENAME_NOREPLACE` fails with `-EEXIST` if `to` exists,
/// `PSTORAGE_RENAME_EXCHANGE` swaps the two (both must exist); 0 is
/// `pstorage_rename`.
///
/// Thread-safety: any thread. Blocking: yes (one MDS round trip).
///
/// Returns 0 or the errors of `pstorage_rename`, and `-EINVAL` for both
/// flags or unknown ones.
#[no_mangle]
pub unsafe extern "C" fn pstorage_rename2(
    cluster: *mut pstorage_cluster_t,
    from: *const c_char,
    to: *const c_char,
    flags: u32,
) -> c_int {
    const F: &str = "pstorage_rename2";
    run_int(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes NUL-terminated strings or NULL.
        let (from, to) = unsafe { (c_str(from, "from", F)?, c_str(to, "to", F)?) };
        check_flags(
            flags,
            PSTORAGE_RENAME_NOREPLACE | PSTORAGE_RENAME_EXCHANGE,
            F,
        )?;
        let flags = RenameFlags {
            no_replace: flags & PSTORAGE_RENAME_NOREPLACE != 0,
            exchange: flags & PSTORAGE_RENAME_EXCHANGE != 0,
        };
        cluster.block_on(F, cluster.client.rename_with(from, to, flags))??;
        Ok(0)
    })
}

/// Fills `*st` with the attributes of `path` without following a symbolic
/// link (the cluster never follows one: `pstorage_stat` is the same call).
///
/// Returns 0 or the errors of `pstorage_stat`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_lstat(
    cluster: *mut pstorage_cluster_t,
    path: *const c_char,
    st: *mut pstorage_stat_t,
) -> c_int {
    // SAFETY: the same contract as pstorage_stat's.
    unsafe { crate::cluster::pstorage_stat(cluster, path, st) }
}

/// Copies the value of the extended attribute `name` of `path` into
/// `value` (`size` bytes); with `size` 0, returns its length only.
///
/// Ownership: the caller owns `value`. Thread-safety: any thread.
/// Blocking: yes (one MDS round trip).
///
/// Returns the value's length, or:
/// - `-ENODATA`: no such attribute;
/// - `-ERANGE`: it does not fit `size` bytes;
/// - `-EOPNOTSUPP`: a name space other than `user.`, `trusted.`,
///   `security.`;
/// - `-EINVAL`, `-ENOENT`, `-EBADF`, `-EAGAIN`, `-ETIMEDOUT`, `-EIO`,
///   `-EDEADLK`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_getxattr(
    cluster: *mut pstorage_cluster_t,
    path: *const c_char,
    name: *const c_char,
    value: *mut c_void,
    size: usize,
) -> libc::ssize_t {
    const F: &str = "pstorage_getxattr";
    run_size(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes NUL-terminated strings or NULL.
        let (path, name) = unsafe { (c_str(path, "path", F)?, c_str(name, "name", F)?) };
        let data = cluster.block_on(F, cluster.client.get_xattr(path, name))??;
        copy_out(&data, value, size, F)
    })
}

/// Copies the names of the extended attributes of `path` into `list`
/// (`size` bytes), each followed by a NUL, as listxattr(2) does; with
/// `size` 0, returns the length needed only.
///
/// Returns that length, or `-ERANGE`, `-EINVAL`, `-ENOENT`, `-EBADF`,
/// `-EAGAIN`, `-ETIMEDOUT`, `-EIO`, `-EDEADLK`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_listxattr(
    cluster: *mut pstorage_cluster_t,
    path: *const c_char,
    list: *mut c_char,
    size: usize,
) -> libc::ssize_t {
    const F: &str = "pstorage_listxattr";
    run_size(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let path = unsafe { c_str(path, "path", F) }?;
        let names = cluster.block_on(F, cluster.client.list_xattrs(path))??;
        let mut out = Vec::new();
        for n in names {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        copy_out(&out, list.cast(), size, F)
    })
}

/// Sets the extended attribute `name` of `path` to `value` (`size` bytes)
/// with setxattr(2)'s `flags`: `XATTR_CREATE` (fail with `-EEXIST` if it
/// exists), `XATTR_REPLACE` (fail with `-ENODATA` if not), or 0.
///
/// Thread-safety: any thread. Blocking: yes (one MDS round trip).
///
/// Returns 0 or `-EEXIST`, `-ENODATA`, `-EOPNOTSUPP`, `-ENAMETOOLONG`,
/// `-ENOSPC` (over 64 KiB, alone or with the node's other attributes),
/// `-EINVAL`, `-ENOENT`, `-EBADF`, `-EAGAIN`, `-ETIMEDOUT`, `-EIO`,
/// `-EDEADLK`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_setxattr(
    cluster: *mut pstorage_cluster_t,
    path: *const c_char,
    name: *const c_char,
    value: *const c_void,
    size: usize,
    flags: c_int,
) -> c_int {
    const F: &str = "pstorage_setxattr";
    run_int(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes NUL-terminated strings or NULL.
        let (path, name) = unsafe { (c_str(path, "path", F)?, c_str(name, "name", F)?) };
        buffer(value, size, "value", F)?;
        let how = match flags {
            0 => XattrSet::Any,
            libc::XATTR_CREATE => XattrSet::Create,
            libc::XATTR_REPLACE => XattrSet::Replace,
            other => return Err(FfiError::invalid(format!("{F}: unknown flags {other:#x}"))),
        };
        let data: &[u8] = if size == 0 {
            &[]
        } else {
            // SAFETY: `value` holds `size` readable bytes (checked non-NULL
            // above; the caller's contract for the length).
            unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }
        };
        cluster.block_on(F, cluster.client.set_xattr(path, name, data, how))??;
        Ok(0)
    })
}

/// Removes the extended attribute `name` of `path`.
///
/// Returns 0 or `-ENODATA` (not set), `-EOPNOTSUPP`, `-EINVAL`, `-ENOENT`,
/// `-EBADF`, `-EAGAIN`, `-ETIMEDOUT`, `-EIO`, `-EDEADLK`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_removexattr(
    cluster: *mut pstorage_cluster_t,
    path: *const c_char,
    name: *const c_char,
) -> c_int {
    const F: &str = "pstorage_removexattr";
    run_int(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes NUL-terminated strings or NULL.
        let (path, name) = unsafe { (c_str(path, "path", F)?, c_str(name, "name", F)?) };
        cluster.block_on(F, cluster.client.remove_xattr(path, name))??;
        Ok(0)
    })
}
