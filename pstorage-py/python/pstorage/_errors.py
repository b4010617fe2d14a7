"""Exception classes of pstorage.

Every error the library reports is a :class:`pstorage.Error` (an ``OSError``)
whose ``errno`` is the POSIX code of its kind and whose ``strerror`` is the
library's message (it names the object and, where possible, the fix). Each
kind has its own subclass, which also inherits the matching builtin
exception, so ``except FileNotFoundError`` works as with local files.
"""

from __future__ import annotations

import errno as _errno
from typing import Dict, Type

__all__ = [
    "Error",
    "NotFound",
    "AlreadyExists",
    "NotADirectory",
    "IsADirectory",
    "NotEmpty",
    "InvalidArgument",
    "PermissionDenied",
    "Busy",
    "Stale",
    "Unavailable",
    "TimedOut",
    "NoSpace",
    "Corrupt",
    "Io",
    "Protocol",
    "FileTooLarge",
    "BadHandle",
    "Internal",
    "Checksum",
    "NameTooLong",
    "NotSupported",
    "NoData",
    "TooManyLinks",
    "WouldBlock",
    "NoLocks",
]


class Error(OSError):
    """Base class of every pstorage error: ``errno`` and ``strerror`` set,
    ``kind`` names the library's error kind (e.g. ``"NotFound"``)."""

    kind: str = "Internal"


class NotFound(Error, FileNotFoundError):
    """No such file or directory (ENOENT)."""

    kind = "NotFound"


class AlreadyExists(Error, FileExistsError):
    """The name already exists (EEXIST)."""

    kind = "AlreadyExists"


class NotADirectory(Error, NotADirectoryError):
    """A path component that must be a directory is a file (ENOTDIR)."""

    kind = "NotADirectory"


class IsADirectory(Error, IsADirectoryError):
    """A file operation was applied to a directory (EISDIR)."""

    kind = "IsADirectory"


class NotEmpty(Error):
    """The directory is not empty (ENOTEMPTY)."""

    kind = "NotEmpty"


class InvalidArgument(Error, ValueError):
    """A bad argument: malformed path, range or attribute (EINVAL)."""

    kind = "InvalidArgument"


class PermissionDenied(Error, PermissionError):
    """Authentication failed or the cluster key is missing (EACCES)."""

    kind = "PermissionDenied"


class Busy(Error):
    """Another client's lease conflicts with the open (EBUSY)."""

    kind = "Busy"


class Stale(Error):
    """The lease was lost; reopen the file (ESTALE)."""

    kind = "Stale"


class Unavailable(Error, ConnectionError):
    """Not enough chunk servers or replicas reachable, or no MDS (EAGAIN)."""

    kind = "Unavailable"


class TimedOut(Error, TimeoutError):
    """An operation did not finish within its deadline (ETIMEDOUT)."""

    kind = "TimedOut"


class NoSpace(Error):
    """No space left on the chunk servers (ENOSPC)."""

    kind = "NoSpace"


class Corrupt(Error):
    """Stored data failed its checksum on every replica (EIO)."""

    kind = "Corrupt"


class Io(Error):
    """A local I/O error on a server (EIO)."""

    kind = "Io"


class Protocol(Error):
    """A malformed or unexpected message from a peer (EPROTO)."""

    kind = "Protocol"


class FileTooLarge(Error):
    """The file would exceed the maximum file size (EFBIG)."""

    kind = "FileTooLarge"


class BadHandle(Error):
    """The handle lacks the lease the operation needs, or is closed (EBADF)."""

    kind = "BadHandle"


class Internal(Error):
    """A bug or an unexpected internal state (EIO)."""

    kind = "Internal"


class Checksum(Error):
    """Data changed in transit: it no longer matches its sender's CRCs (EIO)."""

    kind = "Checksum"


class NameTooLong(Error):
    """A name or symbolic link target is too long (ENAMETOOLONG)."""

    kind = "NameTooLong"


class NotSupported(Error):
    """Not supported, e.g. an extended attribute outside ``user.``,
    ``trusted.`` and ``security.`` (EOPNOTSUPP)."""

    kind = "NotSupported"


class NoData(Error):
    """No such extended attribute (ENODATA)."""

    kind = "NoData"


class TooManyLinks(Error):
    """The file has the most hard links allowed (EMLINK)."""

    kind = "TooManyLinks"


class WouldBlock(Error):
    """A lock is held by another owner (EAGAIN)."""

    kind = "WouldBlock"


class NoLocks(Error):
    """Too many locks are held on the file or in the cluster (ENOLCK)."""

    kind = "NoLocks"


_BY_KIND: Dict[str, Type[Error]] = {
    cls.kind: cls
    for cls in (
        NotFound,
        AlreadyExists,
        NotADirectory,
        IsADirectory,
        NotEmpty,
        InvalidArgument,
        PermissionDenied,
        Busy,
        Stale,
        Unavailable,
        TimedOut,
        NoSpace,
        Corrupt,
        Io,
        Protocol,
        FileTooLarge,
        BadHandle,
        Internal,
        Checksum,
        NameTooLong,
        NotSupported,
        NoData,
        TooManyLinks,
        WouldBlock,
        NoLocks,
    )
}


for _cls in (Error, *_BY_KIND.values()):
    _cls.__module__ = "pstorage"


def _from_kind(kind: str, errno: int, message: str) -> Error:
    """The exception for a library error (called by the native module)."""
    cls = _BY_KIND.get(kind, Error)
    return cls(errno or _errno.EIO, message)
