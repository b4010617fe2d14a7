//! Files only their owner may read: chunk files, journals, MDS stores, the
//! cluster key, the mount's read cache. They hold VM data, the namespace or
//! the secret that admits a node, so they are created with mode 0600 in
//! directories created 0700, and never through a symbolic link planted at
//! their path (`O_NOFOLLOW`). A secret file that others may access is
//! refused (as ssh refuses an unprotected private key).
//!
//! The modes are set at creation, not through the process umask: the SDK
//! is a library and must not change its host process's umask.

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, ErrorKind, Result};

/// Mode of a private file.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of a directory created for private files.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` and its missing parents with mode 0700; existing
/// directories keep their mode.
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// Open options for a private file: created with mode 0600, never through
/// a symbolic link (`ELOOP` if the path is one).
pub fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options
        .mode(PRIVATE_FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW);
    options
}

/// Makes the existing file at `path` private (mode 0600), unless it is a
/// symbolic link (`PermissionDenied`): for files an earlier version created
/// with the umask's mode. A missing file is left alone.
pub fn make_private(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::from(e).context(path.display())),
    };
    if meta.file_type().is_symlink() {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "{} is a symbolic link; pstorage keeps its data files in place, not through links",
                path.display()
            ),
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))
            .map_err(|e| Error::from(e).context(format!("making {} private", path.display())))?;
    }
    Ok(())
}

/// Makes the database file at `path` private before a library (redb)
/// opens or creates it with the umask's mode: an existing one is made
/// private ([`make_private`]), a missing one is created empty with mode
/// 0600 (redb initializes an empty file as a new database).
pub fn prepare_private_file(path: &Path) -> Result<()> {
    if std::fs::symlink_metadata(path).is_ok() {
        return make_private(path);
    }
    private_options()
        .write(true)
        .create_new(true)
        .open(path)
        .map(drop)
        .map_err(|e| Error::from(e).context(format!("creating {}", path.display())))
}

/// `PermissionDenied` if others than the owner may access the secret file
/// at `path` (`what` names it in the message, which says how to fix it).
pub fn check_secret_file(path: &Path, what: &str) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::with_source(
            ErrorKind::PermissionDenied,
            format!("cannot read {what} {}: {e}", path.display()),
            e,
        )
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "{what} {} is accessible by others (mode {mode:04o}): refused; \
                 run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn private_files_and_dirs_get_their_modes_and_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_private_dir_all(&deep).unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&deep), 0o700);
        let file = deep.join("f");
        private_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&file)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        assert_eq!(mode(&file), 0o600);
        // A link planted at a private file's path is not followed.
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"not ours").unwrap();
        let link = deep.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = private_options()
            .write(true)
            .create(true)
            .open(&link)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        assert_eq!(std::fs::read(&target).unwrap(), b"not ours");
        assert_eq!(
            make_private(&link).unwrap_err().kind(),
            ErrorKind::PermissionDenied
        );
        // A file an older version created readable by all becomes private.
        let old = deep.join("old");
        std::fs::write(&old, b"y").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        make_private(&old).unwrap();
        assert_eq!(mode(&old), 0o600);
        make_private(&deep.join("missing")).unwrap();
    }

    #[test]
    fn a_secret_file_others_may_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("auth.key");
        std::fs::write(&key, b"k").unwrap();
        for bad in [0o644, 0o640, 0o604, 0o620, 0o602] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(bad)).unwrap();
            let e = check_secret_file(&key, "the cluster key").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::PermissionDenied);
            assert!(e.to_string().contains("chmod 600"), "{e}");
            assert!(e.to_string().contains(&format!("{bad:04o}")), "{e}");
        }
        for good in [0o600, 0o400] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(good)).unwrap();
            check_secret_file(&key, "the cluster key").unwrap();
        }
        let e = check_secret_file(&dir.path().join("none"), "the cluster key").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    }
}
