//! The mount's inode table: FUSE speaks inode numbers, the MDS API speaks
//! paths.
//!
//! FUSE inode numbers are the MDS's own inode ids (stable for a file's life,
//! the root is 1 on both sides), so the table only has to remember where each
//! inode the kernel knows lives: its parent inode and its name. A path is
//! built by walking parents up to the root, so renaming a directory moves
//! everything below it at once. Nodes are reference-counted like the kernel
//! asks: every reply that hands out an entry (lookup, create, mkdir) adds one,
//! `forget` takes `nlookup` away, and a node at zero is dropped.
//!
//! Not thread-safe by itself: the mount keeps it behind a mutex.

use std::collections::HashMap;

use pstorage_core::error::{Error, ErrorKind, Result};
use pstorage_core::types::{InodeKind, ROOT_INODE};

/// One inode the kernel knows.
#[derive(Debug, Clone)]
struct Node {
    parent: u64,
    name: String,
    /// Its other names the kernel knows (hard links): one takes over when
    /// `name` is removed.
    aliases: Vec<(u64, String)>,
    kind: InodeKind,
    /// Lookups handed to the kernel and not forgotten yet.
    lookups: u64,
    /// Removed from the namespace (unlinked, or replaced by a rename) while
    /// the kernel still knows it; `path` then refuses it unless it was moved
    /// to the mount's hidden directory (open files, see `ops.rs`).
    unlinked: bool,
}

/// ino -> (parent, name) with a reverse index (parent, name) -> ino.
#[derive(Debug)]
pub struct InodeTable {
    nodes: HashMap<u64, Node>,
    names: HashMap<(u64, String), u64>,
}

impl Default for InodeTable {
    fn default() -> Self {
        Self::new()
    }
}

impl InodeTable {
    /// A table that knows only the root directory (never forgotten).
    pub fn new() -> InodeTable {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INODE.0,
            Node {
                parent: ROOT_INODE.0,
                name: String::new(),
                aliases: Vec::new(),
                kind: InodeKind::Dir,
                lookups: 1,
                unlinked: false,
            },
        );
        InodeTable {
            nodes,
            names: HashMap::new(),
        }
    }

    /// The cluster path of `ino`. Errors: `Stale` if the kernel's inode is
    /// not (or no longer) in the table or was removed from the namespace.
    pub fn path(&self, ino: u64) -> Result<String> {
        let mut comps = Vec::new();
        let mut cur = ino;
        // A chain longer than the number of nodes is a cycle: a bug.
        for _ in 0..=self.nodes.len() {
            if cur == ROOT_INODE.0 {
                comps.reverse();
                return Ok(format!("/{}", comps.join("/")));
            }
            let node = self.nodes.get(&cur).ok_or_else(|| {
                Error::stale(format!(
                    "inode {ino} is not known to the mount (forgotten or removed); look the path up again"
                ))
            })?;
            if node.unlinked {
                return Err(Error::stale(format!(
                    "inode {ino} ({}) was removed from the namespace",
                    node.name
                )));
            }
            comps.push(node.name.as_str());
            cur = node.parent;
        }
        Err(Error::internal(format!(
            "the mount's inode table has a cycle above inode {ino}"
        )))
    }

    /// The path of `name` inside directory `parent`.
    pub fn child_path(&self, parent: u64, name: &str) -> Result<String> {
        validate_name(name)?;
        let p = self.path(parent)?;
        Ok(if p == "/" {
            format!("/{name}")
        } else {
            format!("{p}/{name}")
        })
    }

    /// The inode the kernel knows under `parent`/`name`, if any.
    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        self.names.get(&(parent, name.to_string())).copied()
    }

    /// The kind of a known inode.
    pub fn kind(&self, ino: u64) -> Option<InodeKind> {
        self.nodes.get(&ino).map(|n| n.kind)
    }

    /// The parent directory of a known inode (the root is its own parent).
    pub fn parent(&self, ino: u64) -> Option<u64> {
        self.nodes.get(&ino).map(|n| n.parent)
    }

    /// Whether `ino` is known and lives directly in directory `dir`.
    pub fn parent_is(&self, ino: u64, dir: u64) -> bool {
        ino != ROOT_INODE.0 && self.parent(ino) == Some(dir)
    }

    /// Whether `ino` is known and was removed from the namespace.
    pub fn is_unlinked(&self, ino: u64) -> bool {
        self.nodes.get(&ino).is_some_and(|n| n.unlinked)
    }

    /// Records that an entry for `ino` at `parent`/`name` was handed to the
    /// kernel: one more lookup. Also the way the table learns renames made by
    /// other clients: the latest lookup says where the inode lives.
    pub fn add_lookup(&mut self, ino: u64, parent: u64, name: &str, kind: InodeKind) {
        self.add_name_lookup(ino, parent, name, kind, false);
    }

    /// [`InodeTable::add_lookup`] of a non-directory with several names
    /// (hard links): the name it was known by stays known too, and takes
    /// over if this one is removed.
    pub fn add_link_lookup(&mut self, ino: u64, parent: u64, name: &str, kind: InodeKind) {
        self.add_name_lookup(ino, parent, name, kind, kind != InodeKind::Dir);
    }

    fn add_name_lookup(
        &mut self,
        ino: u64,
        parent: u64,
        name: &str,
        kind: InodeKind,
        keep_old: bool,
    ) {
        if ino == ROOT_INODE.0 {
            return;
        }
        // Another inode known under this name was replaced behind our back.
        let key = (parent, name.to_string());
        if let Some(old) = self.names.get(&key).copied() {
            if old != ino {
                self.detach_name(old, &key);
            }
        }
        let node = self.nodes.entry(ino).or_insert_with(|| Node {
            parent,
            name: name.to_string(),
            aliases: Vec::new(),
            kind,
            lookups: 0,
            unlinked: false,
        });
        node.lookups += 1;
        node.kind = kind;
        let moved = node.parent != parent || node.name != name || node.unlinked;
        let old_key = (node.parent, node.name.clone());
        let was_unlinked = node.unlinked;
        if moved {
            node.parent = parent;
            node.name = name.to_string();
            node.unlinked = false;
            node.aliases.retain(|a| *a != key);
            // A file with several names keeps the old one known: it takes
            // over if this one goes. Otherwise the old name was renamed
            // away (by another client).
            if !was_unlinked && self.names.get(&old_key) == Some(&ino) {
                if keep_old {
                    node.aliases.push(old_key);
                } else {
                    self.names.remove(&old_key);
                }
            }
        }
        self.names.insert(key, ino);
    }

    /// Takes `nlookup` lookups away; a node at zero is dropped.
    pub fn forget(&mut self, ino: u64, nlookup: u64) {
        if ino == ROOT_INODE.0 {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(nlookup);
        if node.lookups == 0 {
            let key = (node.parent, node.name.clone());
            let unlinked = node.unlinked;
            let aliases = std::mem::take(&mut node.aliases);
            self.nodes.remove(&ino);
            if !unlinked && self.names.get(&key) == Some(&ino) {
                self.names.remove(&key);
            }
            for a in aliases {
                if self.names.get(&a) == Some(&ino) {
                    self.names.remove(&a);
                }
            }
        }
    }

    /// Records that `parent`/`name` was removed from the namespace.
    pub fn unlink(&mut self, parent: u64, name: &str) {
        let key = (parent, name.to_string());
        if let Some(ino) = self.names.get(&key).copied() {
            self.detach_name(ino, &key);
        }
    }

    /// Removes the name `key` of `ino`: another known name of it takes
    /// over, else it is unlinked.
    fn detach_name(&mut self, ino: u64, key: &(u64, String)) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            if (node.parent, &node.name) == (key.0, &key.1) {
                match node.aliases.pop() {
                    Some((p, n)) => {
                        node.parent = p;
                        node.name = n;
                    }
                    None => node.unlinked = true,
                }
            } else {
                node.aliases.retain(|a| a != key);
            }
            if self.names.get(key) == Some(&ino) {
                self.names.remove(key);
            }
        }
    }

    /// Records a rename of the name `parent`/`name` to
    /// `new_parent`/`new_name` by this mount (a node known at the target was
    /// replaced and loses that name).
    pub fn rename_entry(&mut self, parent: u64, name: &str, new_parent: u64, new_name: &str) {
        let old_key = (parent, name.to_string());
        let new_key = (new_parent, new_name.to_string());
        let Some(ino) = self.names.get(&old_key).copied() else {
            self.unlink(new_parent, new_name);
            return;
        };
        if let Some(old) = self.names.get(&new_key).copied() {
            if old != ino {
                self.detach_name(old, &new_key);
            }
        }
        self.names.remove(&old_key);
        if let Some(node) = self.nodes.get_mut(&ino) {
            if (node.parent, &node.name) == (old_key.0, &old_key.1) {
                node.parent = new_parent;
                node.name = new_name.to_string();
            } else if let Some(a) = node.aliases.iter_mut().find(|a| **a == old_key) {
                *a = new_key.clone();
            }
            node.aliases
                .retain(|a| *a != (node.parent, node.name.clone()));
        }
        self.names.insert(new_key, ino);
    }

    /// Records that the names `a` and `b` (each `(parent, name)`) swapped
    /// their nodes (`RENAME_EXCHANGE`).
    pub fn exchange(&mut self, a: (u64, &str), b: (u64, &str)) {
        let ka = (a.0, a.1.to_string());
        let kb = (b.0, b.1.to_string());
        let ia = self.names.remove(&ka);
        let ib = self.names.remove(&kb);
        let mut rename = |ino: u64, from: &(u64, String), to: &(u64, String)| {
            if let Some(node) = self.nodes.get_mut(&ino) {
                if (node.parent, &node.name) == (from.0, &from.1) {
                    node.parent = to.0;
                    node.name = to.1.clone();
                } else if let Some(x) = node.aliases.iter_mut().find(|x| *x == from) {
                    *x = to.clone();
                }
            }
        };
        if let Some(i) = ia {
            rename(i, &ka, &kb);
        }
        if let Some(i) = ib {
            rename(i, &kb, &ka);
        }
        if let Some(i) = ia {
            self.names.insert(kb, i);
        }
        if let Some(i) = ib {
            self.names.insert(ka, i);
        }
    }

    /// Pins a node that the kernel never sees (the hidden directory): it gets
    /// one lookup that nothing forgets.
    pub fn pin(&mut self, ino: u64, parent: u64, name: &str, kind: InodeKind) {
        self.add_lookup(ino, parent, name, kind);
    }

    /// Number of inodes known (root included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether only the root is known.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }
}

/// Checks a single file name from the kernel.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::invalid(format!("bad file name {name:?}")));
    }
    if name.len() > 255 {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("file name of {} bytes is longer than 255", name.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_parents_and_renames() {
        let mut t = InodeTable::new();
        t.add_lookup(10, ROOT_INODE.0, "vm", InodeKind::Dir);
        t.add_lookup(11, 10, "disk.img", InodeKind::File);
        assert_eq!(t.path(11).unwrap(), "/vm/disk.img");
        assert_eq!(t.child_path(10, "x").unwrap(), "/vm/x");
        assert_eq!(t.child_path(ROOT_INODE.0, "x").unwrap(), "/x");
        assert_eq!(t.child(10, "disk.img"), Some(11));
        // Renaming the directory moves the file below it.
        t.rename_entry(ROOT_INODE.0, "vm", ROOT_INODE.0, "vms");
        assert_eq!(t.path(11).unwrap(), "/vms/disk.img");
        assert_eq!(t.child(ROOT_INODE.0, "vm"), None);
        assert_eq!(t.child(ROOT_INODE.0, "vms"), Some(10));
    }

    #[test]
    fn rename_over_a_known_inode_unlinks_it() {
        let mut t = InodeTable::new();
        t.add_lookup(20, ROOT_INODE.0, "a", InodeKind::File);
        t.add_lookup(21, ROOT_INODE.0, "b", InodeKind::File);
        t.rename_entry(ROOT_INODE.0, "a", ROOT_INODE.0, "b");
        assert_eq!(t.path(20).unwrap(), "/b");
        assert!(t.is_unlinked(21));
        assert_eq!(t.path(21).unwrap_err().kind(), ErrorKind::Stale);
        assert_eq!(t.child(ROOT_INODE.0, "b"), Some(20));
        // Forgetting the replaced inode does not drop the new name.
        t.forget(21, 1);
        assert_eq!(t.child(ROOT_INODE.0, "b"), Some(20));
    }

    #[test]
    fn forget_drops_at_zero_only() {
        let mut t = InodeTable::new();
        t.add_lookup(30, ROOT_INODE.0, "f", InodeKind::File);
        t.add_lookup(30, ROOT_INODE.0, "f", InodeKind::File);
        t.forget(30, 1);
        assert!(t.path(30).is_ok());
        t.forget(30, 1);
        assert!(t.path(30).is_err());
        assert_eq!(t.child(ROOT_INODE.0, "f"), None);
        assert!(t.is_empty());
        t.forget(ROOT_INODE.0, 100);
        assert_eq!(t.path(ROOT_INODE.0).unwrap(), "/");
    }

    #[test]
    fn unlink_and_relookup() {
        let mut t = InodeTable::new();
        t.add_lookup(40, ROOT_INODE.0, "f", InodeKind::File);
        t.unlink(ROOT_INODE.0, "f");
        assert!(t.is_unlinked(40));
        assert_eq!(t.child(ROOT_INODE.0, "f"), None);
        // A new file under the same name.
        t.add_lookup(41, ROOT_INODE.0, "f", InodeKind::File);
        assert_eq!(t.child(ROOT_INODE.0, "f"), Some(41));
        // Another client renamed 41 away; a lookup finds it elsewhere.
        t.add_lookup(42, ROOT_INODE.0, "d", InodeKind::Dir);
        t.add_lookup(41, 42, "g", InodeKind::File);
        assert_eq!(t.path(41).unwrap(), "/d/g");
        assert_eq!(t.child(ROOT_INODE.0, "f"), None);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn a_file_known_by_two_names_keeps_a_path_when_one_goes() {
        let mut t = InodeTable::new();
        t.add_lookup(50, ROOT_INODE.0, "a", InodeKind::File);
        t.add_link_lookup(50, ROOT_INODE.0, "b", InodeKind::File);
        assert_eq!(t.path(50).unwrap(), "/b");
        assert_eq!(t.child(ROOT_INODE.0, "a"), Some(50));
        t.unlink(ROOT_INODE.0, "b");
        assert_eq!(t.path(50).unwrap(), "/a", "the other name takes over");
        assert!(!t.is_unlinked(50));
        t.add_link_lookup(50, ROOT_INODE.0, "c", InodeKind::File);
        t.rename_entry(ROOT_INODE.0, "a", ROOT_INODE.0, "d");
        assert_eq!(t.child(ROOT_INODE.0, "d"), Some(50));
        t.unlink(ROOT_INODE.0, "c");
        assert_eq!(t.path(50).unwrap(), "/d", "the renamed alias");
        t.unlink(ROOT_INODE.0, "d");
        assert!(t.is_unlinked(50));
        // An exchange swaps two names' nodes.
        t.add_lookup(60, ROOT_INODE.0, "x", InodeKind::File);
        t.add_lookup(61, ROOT_INODE.0, "y", InodeKind::Dir);
        t.exchange((ROOT_INODE.0, "x"), (ROOT_INODE.0, "y"));
        assert_eq!(t.path(60).unwrap(), "/y");
        assert_eq!(t.path(61).unwrap(), "/x");
        assert_eq!(t.child(ROOT_INODE.0, "x"), Some(61));
        t.forget(50, 3);
        assert_eq!(t.child(ROOT_INODE.0, "d"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("ok").is_ok());
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&"x".repeat(256)).is_err());
    }
}
