//! The POSIX side of the namespace for SDK users: permissions and owners
//! of new directories, symbolic and hard links, FIFOs, sockets and device
//! nodes, `chmod`/`chown`/`utimensat`, extended attributes and rename
//! flags. Every mutation carries its [`OpTag`](crate::types::OpTag) and is
//! retried across MDS fail-overs like the others ([`Client::mutate`]).
//!
//! Paths name nodes as they are: a symbolic link in the middle of a path is
//! not followed (`NotADirectory`), as the MDS resolves paths name by name;
//! the mount's kernel follows links itself.

use super::Client;
use crate::error::Result;
use crate::types::*;

impl Client {
    /// [`Client::mkdir`] with `perms` (a set-group-id parent gives its group
    /// and its set-group-id bit).
    pub async fn mkdir_with(&self, path: &str, parents: bool, perms: Perms) -> Result<Stat> {
        perms.validate()?;
        let mds = &self.shared.mds;
        self.mutate("mkdir", path, |op| {
            mds.mkdir_with(path, parents, perms, Some(op))
        })
        .await
    }

    /// Creates a node that is not a directory (an empty file, a symbolic
    /// link, a FIFO, a socket, a device node). Errors: `AlreadyExists`,
    /// `NotFound` (missing parent, or an empty symlink target),
    /// `NameTooLong`, `InvalidArgument`.
    pub async fn make_node(&self, path: &str, node: NewNode) -> Result<Stat> {
        node.perms.validate()?;
        node.spec.validate()?;
        let mds = &self.shared.mds;
        self.mutate("mknod", path, |op| {
            mds.make_node(path, node.clone(), Some(op))
        })
        .await
    }

    /// Creates the symbolic link `path` pointing at `target` (mode 0777,
    /// owned by `uid`:`gid`).
    pub async fn symlink(&self, target: &str, path: &str, uid: u32, gid: u32) -> Result<Stat> {
        let node = NewNode {
            spec: NodeSpec::Symlink {
                target: target.to_string(),
            },
            perms: Perms {
                mode: 0o777,
                uid,
                gid,
            },
        };
        self.make_node(path, node).await
    }

    /// The target of the symbolic link at `path`. Errors: `NotFound`,
    /// `InvalidArgument` (not a symbolic link).
    pub async fn readlink(&self, path: &str) -> Result<String> {
        let mds = &self.shared.mds;
        self.meta("readlink", path, || mds.readlink(path)).await
    }

    /// Gives the node at `from` the further name `to` (a hard link).
    /// Errors: `AlreadyExists`, `NotFound`, `PermissionDenied` (a
    /// directory), `TooManyLinks`.
    pub async fn link(&self, from: &str, to: &str) -> Result<Stat> {
        let mds = &self.shared.mds;
        self.mutate("link", from, |op| mds.link(from, to, Some(op)))
            .await
    }

    /// [`Client::rename`] with `renameat2`'s flags: `no_replace` refuses an
    /// existing target (`AlreadyExists`), `exchange` swaps two names.
    pub async fn rename_with(&self, from: &str, to: &str, flags: RenameFlags) -> Result<()> {
        flags.validate()?;
        let mds = &self.shared.mds;
        self.mutate("rename", from, |op| {
            mds.rename_with(from, to, flags, Some(op))
        })
        .await
    }

    /// Changes the mode, owners or times of `path` and returns its new
    /// attributes (`chmod`, `chown`, `utimensat`; the ctime becomes now).
    pub async fn set_stat(&self, path: &str, change: StatChange) -> Result<Stat> {
        change.validate()?;
        let mds = &self.shared.mds;
        self.mutate("set-stat", path, |op| mds.set_stat(path, change, Some(op)))
            .await
    }

    /// `chmod`: sets the permission bits (07777).
    pub async fn chmod(&self, path: &str, mode: u32) -> Result<Stat> {
        let change = StatChange {
            mode: Some(mode),
            ..StatChange::default()
        };
        self.set_stat(path, change).await
    }

    /// `chown`: sets the owner and/or the group.
    pub async fn chown(&self, path: &str, uid: Option<u32>, gid: Option<u32>) -> Result<Stat> {
        let change = StatChange {
            uid,
            gid,
            ..StatChange::default()
        };
        self.set_stat(path, change).await
    }

    /// `utimensat`: sets the access and/or modification time.
    pub async fn utimes(
        &self,
        path: &str,
        atime: Option<TimeChange>,
        mtime: Option<TimeChange>,
    ) -> Result<Stat> {
        let change = StatChange {
            atime,
            mtime,
            ..StatChange::default()
        };
        self.set_stat(path, change).await
    }

    /// The value of an extended attribute. Errors: `NoData` (not set),
    /// `NotSupported` (a name space the cluster does not store).
    pub async fn get_xattr(&self, path: &str, name: &str) -> Result<Vec<u8>> {
        validate_xattr_name(name)?;
        let mds = &self.shared.mds;
        self.meta("getxattr", path, || mds.get_xattr(path, name))
            .await
    }

    /// The names of the extended attributes of `path`, sorted.
    pub async fn list_xattrs(&self, path: &str) -> Result<Vec<String>> {
        let mds = &self.shared.mds;
        self.meta("listxattr", path, || mds.list_xattrs(path)).await
    }

    /// Sets an extended attribute (`how`: also when it exists or not,
    /// only if not, only if it does). Errors: `AlreadyExists`, `NoData`,
    /// `NotSupported`, `NameTooLong`, `NoSpace` (the value or the node's
    /// total is too large).
    pub async fn set_xattr(
        &self,
        path: &str,
        name: &str,
        value: &[u8],
        how: XattrSet,
    ) -> Result<()> {
        validate_xattr_name(name)?;
        let mds = &self.shared.mds;
        self.mutate("setxattr", path, |op| {
            mds.set_xattr(path, name, Some(value.to_vec()), how, Some(op))
        })
        .await
    }

    /// Removes an extended attribute. Errors: `NoData` (not set).
    pub async fn remove_xattr(&self, path: &str, name: &str) -> Result<()> {
        validate_xattr_name(name)?;
        let mds = &self.shared.mds;
        self.mutate("removexattr", path, |op| {
            mds.set_xattr(path, name, None, XattrSet::Any, Some(op))
        })
        .await
    }
}
