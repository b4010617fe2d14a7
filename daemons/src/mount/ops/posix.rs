//! The mount's POSIX operations beyond files and directories: `mknod` of
//! every kind, symbolic and hard links, `chmod`/`chown`/`utimensat`, rename
//! flags and extended attributes. Each is one MDS call; the kernel checks
//! permissions itself from the modes and owners stored (the mount asks for
//! `default_permissions`).

use std::sync::atomic::Ordering;

use pstorage_core::error::{Error, ErrorKind, Result};
use pstorage_core::types::{
    InodeKind, NewNode, NodeSpec, Perms, RenameFlags, StatChange, TimeChange, XattrSet, S_ISGID,
    S_ISUID, S_IXGRP,
};

use super::{lock, Attr, FsOps, OpenInode};

/// What an `S_IFMT` value makes, with the device number `rdev`.
pub fn node_spec(mode: u32, rdev: u32) -> Result<NodeSpec> {
    Ok(match mode & libc::S_IFMT {
        0 | libc::S_IFREG => NodeSpec::File,
        libc::S_IFIFO => NodeSpec::Fifo,
        libc::S_IFSOCK => NodeSpec::Socket,
        libc::S_IFCHR => NodeSpec::CharDevice { rdev: rdev.into() },
        libc::S_IFBLK => NodeSpec::BlockDevice { rdev: rdev.into() },
        other => {
            return Err(Error::invalid(format!(
                "mknod of type {other:#o}: only files, FIFOs, sockets and devices"
            )))
        }
    })
}

/// `getxattr`/`listxattr` answers: the size when the caller asked for it
/// (`size` 0), the bytes when they fit, `ERANGE` otherwise.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrReply {
    Size(u32),
    Data(Vec<u8>),
}

/// The reply to a buffer of `size` bytes for `data`.
pub fn xattr_reply(data: Vec<u8>, size: u32) -> Result<XattrReply> {
    let len = u32::try_from(data.len())
        .map_err(|_| Error::new(ErrorKind::NoSpace, "extended attribute too large"))?;
    if size == 0 {
        Ok(XattrReply::Size(len))
    } else if len > size {
        Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("the buffer of {size} bytes is too small for {len}"),
        ))
    } else {
        Ok(XattrReply::Data(data))
    }
}

impl FsOps {
    /// Creates the node `name` in `parent` (mknod(2): a regular file, a
    /// FIFO, a socket or a device node) with `perms`.
    pub async fn mknod(
        &self,
        parent: u64,
        name: &str,
        spec: NodeSpec,
        perms: Perms,
    ) -> Result<Attr> {
        // Forgets the directories' attributes kept from creates.
        let _change = self.dir_stats.change();
        let path = self.child_path(parent, name)?;
        let kind = InodeKind::of_spec(&spec);
        let st = self
            .client
            .make_node(&path, NewNode { spec, perms })
            .await?;
        lock(&self.inodes).add_lookup(st.ino.0, parent, name, kind);
        Ok(self.attr(&st, false))
    }

    /// Creates the symbolic link `name` in `parent` to `target`, owned by
    /// `uid`:`gid` (its mode is 0777, as on Linux).
    pub async fn symlink(
        &self,
        parent: u64,
        name: &str,
        target: &str,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        // Forgets the directories' attributes kept from creates.
        let _change = self.dir_stats.change();
        let perms = Perms {
            mode: 0o777,
            uid,
            gid,
        };
        let spec = NodeSpec::Symlink {
            target: target.to_string(),
        };
        self.mknod(parent, name, spec, perms).await
    }

    /// The target of the symbolic link `ino`.
    pub async fn readlink(&self, ino: u64) -> Result<String> {
        let path = self.path(ino)?;
        self.client.readlink(&path).await
    }

    /// Gives `ino` the further name `new_name` in `new_parent` (link(2)).
    pub async fn link(&self, ino: u64, new_parent: u64, new_name: &str) -> Result<Attr> {
        // Forgets the directories' attributes kept from creates.
        let _change = self.dir_stats.change();
        let from = self.path(ino)?;
        let to = self.child_path(new_parent, new_name)?;
        let st = self.client.link(&from, &to).await?;
        lock(&self.inodes).add_link_lookup(st.ino.0, new_parent, new_name, st.kind);
        // A file open here reports its attributes from its lease's stat,
        // which just changed (nlink, ctime); and its size is what this
        // mount wrote, not the MDS's yet: answer as getattr does (the
        // MDS's size in the reply would shrink the file in the kernel).
        if let Some(oi) = self.open.get(ino) {
            *lock(&oi.leased_stat) = None;
        }
        self.getattr(ino)
            .await
            .or_else(|_| Ok(self.attr(&st, false)))
    }

    /// chmod, chown, utimensat of `ino`. A file this mount writes is
    /// flushed first when its times are set, so that the size it commits
    /// later does not move its mtime again (`cp -p`, `rsync -a`, `tar`
    /// set times on the open file).
    pub(super) async fn set_stat(&self, ino: u64, change: StatChange) -> Result<()> {
        let path = self.path(ino)?;
        let oi = self.open.get(ino);
        if let Some(oi) = &oi {
            if change.mtime.is_some() || change.atime.is_some() {
                let file = lock(&oi.file).clone();
                if let Some(f) = file {
                    f.flush().await?;
                }
                oi.local_mtime_ms.store(0, Ordering::Relaxed);
            }
        }
        self.client.set_stat(&path, change).await?;
        if let Some(oi) = &oi {
            *lock(&oi.leased_stat) = None;
        }
        Ok(())
    }

    /// Sets the access time of `ino` to now (a read file's last close);
    /// best effort: a failure is logged, the close already succeeded.
    pub(super) async fn touch_atime(&self, ino: u64) {
        let Ok(path) = self.path(ino) else {
            return;
        };
        let change = StatChange {
            atime: Some(TimeChange::Now),
            ..StatChange::default()
        };
        if let Err(e) = self.client.set_stat(&path, change).await {
            tracing::debug!("recording the access time of {path}: {e}");
        }
    }

    /// What a write drops, as Linux drops it: the security.capability
    /// attribute (looked for once per lease: at the first write), and with
    /// `suidgid` (the kernel's `FUSE_WRITE_KILL_SUIDGID`: a writer without
    /// `CAP_FSETID`) the set-user-id bit, and set-group-id with group
    /// execute.
    pub(super) async fn kill_privs(&self, ino: u64, oi: &OpenInode, suidgid: bool) -> Result<()> {
        const CAPS: &str = "security.capability";
        let path = self.path(ino)?;
        if !oi.privs_checked.swap(true, Ordering::Relaxed) {
            let found = match self.client.get_xattr(&path, CAPS).await {
                Ok(_) => true,
                Err(e) if e.kind() == ErrorKind::NoData => false,
                Err(e) => {
                    oi.privs_checked.store(false, Ordering::Relaxed);
                    return Err(e);
                }
            };
            if found {
                match self.client.remove_xattr(&path, CAPS).await {
                    Err(e) if e.kind() != ErrorKind::NoData => {
                        oi.privs_checked.store(false, Ordering::Relaxed);
                        return Err(e);
                    }
                    _ => {}
                }
            }
        }
        if suidgid {
            let st = self.client.stat(&path).await?;
            let mut mode = st.mode & !S_ISUID;
            if mode & S_IXGRP != 0 {
                mode &= !S_ISGID;
            }
            if mode != st.mode {
                let change = StatChange {
                    mode: Some(mode),
                    ..StatChange::default()
                };
                self.client.set_stat(&path, change).await?;
            }
        }
        *lock(&oi.leased_stat) = None;
        Ok(())
    }

    /// A rename with `RENAME_NOREPLACE` or `RENAME_EXCHANGE`: one atomic
    /// MDS call; nothing is replaced, so no open file needs hiding.
    pub(super) async fn rename_flagged(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        flags: RenameFlags,
    ) -> Result<()> {
        let from = self.child_path(parent, name)?;
        let to = self.child_path(new_parent, new_name)?;
        self.client.rename_with(&from, &to, flags).await?;
        let mut inodes = lock(&self.inodes);
        if flags.exchange {
            inodes.exchange((parent, name), (new_parent, new_name));
        } else {
            inodes.rename_entry(parent, name, new_parent, new_name);
        }
        Ok(())
    }

    /// getxattr(2) of `ino` into a buffer of `size` bytes.
    pub async fn getxattr(&self, ino: u64, name: &str, size: u32) -> Result<XattrReply> {
        let path = self.path(ino)?;
        xattr_reply(self.client.get_xattr(&path, name).await?, size)
    }

    /// listxattr(2) of `ino` into a buffer of `size` bytes: the names, each
    /// ended by a NUL.
    pub async fn listxattr(&self, ino: u64, size: u32) -> Result<XattrReply> {
        let path = self.path(ino)?;
        let mut out = Vec::new();
        for n in self.client.list_xattrs(&path).await? {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        xattr_reply(out, size)
    }

    /// setxattr(2) of `ino` with its `flags` (`XATTR_CREATE`,
    /// `XATTR_REPLACE`).
    pub async fn setxattr(&self, ino: u64, name: &str, value: &[u8], flags: i32) -> Result<()> {
        // Forgets the directories' attributes kept from creates.
        let _change = self.dir_stats.change();
        let how = match flags {
            0 => XattrSet::Any,
            libc::XATTR_CREATE => XattrSet::Create,
            libc::XATTR_REPLACE => XattrSet::Replace,
            other => return Err(Error::invalid(format!("setxattr flags {other:#x}"))),
        };
        let path = self.path(ino)?;
        self.client.set_xattr(&path, name, value, how).await?;
        if let Some(oi) = self.open.get(ino) {
            *lock(&oi.leased_stat) = None;
        }
        Ok(())
    }

    /// removexattr(2) of `ino`.
    pub async fn removexattr(&self, ino: u64, name: &str) -> Result<()> {
        // Forgets the directories' attributes kept from creates.
        let _change = self.dir_stats.change();
        let path = self.path(ino)?;
        self.client.remove_xattr(&path, name).await?;
        if let Some(oi) = self.open.get(ino) {
            *lock(&oi.leased_stat) = None;
        }
        Ok(())
    }
}

/// The [`StatChange`] of a setattr request's mode, owners and times
/// (`None`: left alone; the kernel's `TimeOrNow::Now` is the MDS's now).
pub fn stat_change(
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    atime: Option<Option<std::time::SystemTime>>,
    mtime: Option<Option<std::time::SystemTime>>,
) -> StatChange {
    let time = |t: Option<std::time::SystemTime>| match t {
        None => TimeChange::Now,
        Some(t) => TimeChange::At(super::timestamp_of(t)),
    };
    StatChange {
        mode: mode.map(|m| m & pstorage_core::types::PERMISSION_BITS),
        uid,
        gid,
        atime: atime.map(time),
        mtime: mtime.map(time),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mknod_types_map_to_node_kinds() {
        assert_eq!(node_spec(libc::S_IFREG | 0o644, 0).unwrap(), NodeSpec::File);
        assert_eq!(node_spec(0o644, 0).unwrap(), NodeSpec::File);
        assert_eq!(node_spec(libc::S_IFIFO, 0).unwrap(), NodeSpec::Fifo);
        assert_eq!(node_spec(libc::S_IFSOCK, 0).unwrap(), NodeSpec::Socket);
        assert_eq!(
            node_spec(libc::S_IFCHR, 0x0501).unwrap(),
            NodeSpec::CharDevice { rdev: 0x0501 }
        );
        assert_eq!(
            node_spec(libc::S_IFBLK, 7).unwrap(),
            NodeSpec::BlockDevice { rdev: 7 }
        );
        assert!(node_spec(libc::S_IFDIR, 0).is_err());
    }

    #[test]
    fn xattr_buffers_get_the_size_the_data_or_erange() {
        assert_eq!(
            xattr_reply(b"abc".to_vec(), 0).unwrap(),
            XattrReply::Size(3)
        );
        assert_eq!(
            xattr_reply(b"abc".to_vec(), 3).unwrap(),
            XattrReply::Data(b"abc".to_vec())
        );
        assert_eq!(
            xattr_reply(b"abc".to_vec(), 2).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn times_before_the_epoch_and_with_nanoseconds_survive_the_kernel() {
        use pstorage_core::types::Timestamp;
        for t in [
            Timestamp { sec: 0, nsec: 0 },
            Timestamp {
                sec: 1_700_000_000,
                nsec: 123_456_789,
            },
            Timestamp { sec: -1, nsec: 5 },
            Timestamp {
                sec: -86_400,
                nsec: 0,
            },
        ] {
            assert_eq!(super::super::timestamp_of(super::super::time_of(t)), t);
        }
    }
}
