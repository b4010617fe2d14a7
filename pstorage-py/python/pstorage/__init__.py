"""pstorage: the Python SDK of the pstorage distributed storage system.

>>> import pstorage
>>> with pstorage.Cluster("mycluster") as cluster:
...     with cluster.open("/hello.txt", "wb") as f:
...         _ = f.write(b"hello")
...     print(cluster.stat("/hello.txt").size)
5

See :class:`Cluster` for the namespace and :class:`File` for I/O. Errors are
:class:`Error` subclasses that also inherit the matching builtin exception.
"""

from ._cluster import Cluster, DirEntry
from ._errors import (
    AlreadyExists,
    BadHandle,
    Busy,
    Checksum,
    Corrupt,
    Error,
    FileTooLarge,
    Internal,
    InvalidArgument,
    Io,
    IsADirectory,
    NameTooLong,
    NoData,
    NoSpace,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotSupported,
    PermissionDenied,
    Protocol,
    Stale,
    TimedOut,
    TooManyLinks,
    WouldBlock,
    NoLocks,
    Unavailable,
)
from ._file import File
from ._pstorage import Attrs, ChunkServerInfo, ClusterStatus, MdsInfo, StatResult, __version__

__all__ = [
    "Cluster",
    "File",
    "DirEntry",
    "StatResult",
    "Attrs",
    "ClusterStatus",
    "ChunkServerInfo",
    "MdsInfo",
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
    "NoData",
    "NotSupported",
    "TooManyLinks",
    "WouldBlock",
    "NoLocks",
    "__version__",
]
