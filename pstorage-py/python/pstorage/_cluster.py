"""``pstorage.Cluster``: a connection to one pstorage cluster."""

from __future__ import annotations

import errno
import os
import posixpath
import weakref
from types import TracebackType
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple, Type, Union

from . import _errors
from ._file import File
from ._pstorage import Attrs, ClusterStatus, RawCluster, StatResult

__all__ = ["Cluster", "DirEntry"]


class DirEntry(NamedTuple):
    """One entry of :meth:`Cluster.scandir`."""

    name: str
    path: str
    stat: StatResult

    def is_dir(self) -> bool:
        return self.stat.is_dir

    def is_file(self) -> bool:
        return self.stat.is_file

    def is_symlink(self) -> bool:
        """Whether the entry is a symbolic link (the cluster never follows
        one, so ``is_dir``/``is_file`` describe the link itself)."""
        return self.stat.kind == "symlink"


class _Mode(NamedTuple):
    normalized: str
    write_lease: bool
    create: bool
    exclusive: bool
    truncate: bool
    readable: bool
    writable: bool
    append: bool


def _parse_mode(mode: str) -> _Mode:
    """Python's binary open modes: r, r+, w, w+, a, a+, x, x+ (``b`` optional)."""
    if not isinstance(mode, str):
        raise TypeError(f"mode must be a str, not {type(mode).__name__}")
    if "t" in mode:
        raise ValueError(
            f"invalid mode {mode!r}: pstorage files are binary; wrap one in io.TextIOWrapper for text"
        )
    kinds = [c for c in mode if c in "rwax"]
    if len(kinds) != 1 or set(mode) - set("rwaxb+") or len(set(mode)) != len(mode):
        raise ValueError(
            f"invalid mode {mode!r}: use one of 'rb', 'r+b', 'wb', 'w+b', 'ab', 'a+b', 'xb', 'x+b'"
        )
    kind, plus = kinds[0], "+" in mode
    normalized = kind + "b" + ("+" if plus else "")
    if kind == "r":
        return _Mode(normalized, plus, False, False, False, True, plus, False)
    create, exclusive, truncate = True, kind == "x", kind == "w"
    return _Mode(normalized, True, create, exclusive, truncate, plus, True, kind == "a")


def _path(path: Union[str, "os.PathLike[str]"]) -> str:
    p = os.fspath(path)
    if not isinstance(p, str):
        raise TypeError(f"a cluster path must be a str, not {type(p).__name__}")
    return p


class Cluster:
    """A connection to the pstorage cluster ``name``.

    The cluster is found in ``conf_dir/<name>`` (``bs.list``, and this
    node's certificate ``ca.crt``, ``node.crt``, ``node.key``, written by
    ``pstorage -c NAME auth-node``); ``conf_dir``
    defaults to ``$PSTORAGE_CONF_DIR``, else ``/etc/pstorage/clusters``.
    ``timeout`` (seconds) bounds each call: connecting, every metadata call
    and the retries of one read or write while replicas are unreachable.

    Paths are absolute (``/dir/file``). All methods are thread-safe and
    release the GIL while they wait. As a context manager, leaving the block
    closes every file still open through this cluster, then disconnects.
    """

    def __init__(
        self,
        name: str,
        conf_dir: Union[str, "os.PathLike[str]", None] = None,
        *,
        timeout: float = 60.0,
    ) -> None:
        self._raw = RawCluster(name, None if conf_dir is None else os.fspath(conf_dir), float(timeout))
        self._files: "weakref.WeakSet[File]" = weakref.WeakSet()

    @property
    def name(self) -> str:
        """The cluster's name."""
        return self._raw.name

    @property
    def conf_dir(self) -> str:
        """The configuration root the cluster was found in."""
        return os.fspath(self._raw.conf_dir)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._raw.closed

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<pstorage.Cluster {self.name!r} conf_dir={self.conf_dir!r}{state}>"

    # -- files ------------------------------------------------------------

    def open(self, path: Union[str, "os.PathLike[str]"], mode: str = "rb") -> File:
        """Opens a file; returns a :class:`pstorage.File` (an ``io.RawIOBase``).

        ``rb`` takes a shared read lease. ``r+b``, ``wb``, ``ab``, ``xb`` (and
        their ``+`` forms) take the exclusive write lease: ``w`` creates or
        truncates, ``a`` creates and writes at the end, ``x`` creates and
        fails with ``FileExistsError`` if the file exists, ``r+`` needs an
        existing file. Raises ``FileNotFoundError``, ``IsADirectoryError``,
        ``FileExistsError``, or :class:`pstorage.Busy` when another client
        holds a conflicting lease.
        """
        m = _parse_mode(mode)
        raw = self._raw.open(_path(path), m.write_lease, m.create, m.exclusive, m.truncate)
        f = File(raw, m.normalized, readable=m.readable, writable=m.writable, append=m.append)
        self._files.add(f)
        return f

    # -- namespace --------------------------------------------------------

    def stat(self, path: Union[str, "os.PathLike[str]"]) -> StatResult:
        """Size, kind, times and attributes of a file or directory."""
        return self._raw.stat(_path(path))

    def exists(self, path: Union[str, "os.PathLike[str]"]) -> bool:
        """Whether ``path`` exists."""
        return self._raw.exists(_path(path))

    def listdir(self, path: Union[str, "os.PathLike[str]"] = "/") -> List[str]:
        """The names in a directory, sorted."""
        return [name for name, _ in self._raw.readdir(_path(path))]

    def scandir(self, path: Union[str, "os.PathLike[str]"] = "/") -> List[DirEntry]:
        """The entries of a directory with their stat, sorted by name."""
        p = _path(path)
        return [DirEntry(n, posixpath.join(p, n), s) for n, s in self._raw.readdir(p)]

    def walk(self, top: Union[str, "os.PathLike[str]"] = "/") -> Iterator[Tuple[str, List[str], List[str]]]:
        """Like ``os.walk`` (top-down): ``(dirpath, dirnames, filenames)``."""
        stack = [_path(top)]
        while stack:
            d = stack.pop()
            entries = self.scandir(d)
            dirs = [e.name for e in entries if e.is_dir()]
            files = [e.name for e in entries if not e.is_dir()]
            yield d, dirs, files
            stack.extend(posixpath.join(d, n) for n in reversed(dirs))

    def mkdir(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Creates a directory; ``FileExistsError`` if the name exists,
        ``FileNotFoundError`` if the parent does not."""
        self._raw.mkdir(_path(path), False)

    def makedirs(self, path: Union[str, "os.PathLike[str]"], exist_ok: bool = False) -> None:
        """Creates a directory and its missing parents, like ``os.makedirs``."""
        p = _path(path)
        if exist_ok:
            self._raw.mkdir(p, True)
            return
        try:
            self._raw.mkdir(p, False)
        except FileNotFoundError:
            parent = posixpath.dirname(p.rstrip("/")) or "/"
            self._raw.mkdir(parent, True)
            self._raw.mkdir(p, False)

    def remove(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Removes a file (nobody may hold a lease on it) or an empty directory."""
        self._raw.unlink(_path(path))

    def rmdir(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Removes an empty directory; ``NotADirectoryError`` for a file."""
        p = _path(path)
        if not self._raw.stat(p).is_dir:
            raise _errors.NotADirectory(errno.ENOTDIR, f"{p} is a file, not a directory; use remove()")
        self._raw.unlink(p)

    def rename(self, src: Union[str, "os.PathLike[str]"], dst: Union[str, "os.PathLike[str]"]) -> None:
        """Renames a file or directory; replaces a file at ``dst``."""
        self._raw.rename(_path(src), _path(dst))

    def rename2(
        self,
        src: Union[str, "os.PathLike[str]"],
        dst: Union[str, "os.PathLike[str]"],
        *,
        noreplace: bool = False,
        exchange: bool = False,
    ) -> None:
        """``renameat2``: with ``noreplace``, ``FileExistsError`` if ``dst``
        exists; with ``exchange``, swaps the two names atomically."""
        self._raw.rename2(_path(src), _path(dst), noreplace, exchange)

    # -- POSIX: links, special files, permissions, times, xattrs ----------
    # New nodes are owned by this process's effective uid and gid, as on a
    # local file system; no umask is applied to the modes given.

    def mkdir_mode(self, path: Union[str, "os.PathLike[str]"], mode: int = 0o755) -> StatResult:
        """Creates a directory with permission bits ``mode``."""
        return self._raw.mkdir_mode(_path(path), False, mode, os.geteuid(), os.getegid())

    def symlink(self, src: str, dst: Union[str, "os.PathLike[str]"]) -> None:
        """Creates the symbolic link ``dst`` pointing at ``src``, like
        ``os.symlink`` (the cluster stores ``src`` as text and never follows
        it)."""
        self._raw.make_node(_path(dst), "symlink", 0o777, os.geteuid(), os.getegid(), 0, src)

    def readlink(self, path: Union[str, "os.PathLike[str]"]) -> str:
        """The target of a symbolic link (``OSError`` EINVAL for another
        kind of node)."""
        return self._raw.readlink(_path(path))

    def link(self, src: Union[str, "os.PathLike[str]"], dst: Union[str, "os.PathLike[str]"]) -> None:
        """Gives ``src`` (not a directory) the further name ``dst``, like
        ``os.link``."""
        self._raw.link(_path(src), _path(dst))

    def lstat(self, path: Union[str, "os.PathLike[str]"]) -> StatResult:
        """``stat`` of the node itself (the cluster never follows links)."""
        return self._raw.stat(_path(path))

    def mkfifo(self, path: Union[str, "os.PathLike[str]"], mode: int = 0o644) -> None:
        """Creates a named pipe (its data never reaches the cluster)."""
        self._raw.make_node(_path(path), "fifo", mode, os.geteuid(), os.getegid())

    def mknod(self, path: Union[str, "os.PathLike[str]"], mode: int = 0o600, device: int = 0) -> None:
        """Creates a node like ``os.mknod``: ``mode`` carries ``stat.S_IFREG``,
        ``S_IFIFO``, ``S_IFSOCK``, ``S_IFCHR`` or ``S_IFBLK``; ``device`` is
        a device node's number."""
        import stat as _stat

        kinds = {
            0: "file",
            _stat.S_IFREG: "file",
            _stat.S_IFIFO: "fifo",
            _stat.S_IFSOCK: "socket",
            _stat.S_IFCHR: "chardev",
            _stat.S_IFBLK: "blockdev",
        }
        kind = kinds.get(_stat.S_IFMT(mode))
        if kind is None:
            raise _errors.InvalidArgument(errno.EINVAL, f"mknod: file type {_stat.S_IFMT(mode):#o} is not one mknod creates")
        self._raw.make_node(_path(path), kind, _stat.S_IMODE(mode), os.geteuid(), os.getegid(), device)

    def chmod(self, path: Union[str, "os.PathLike[str]"], mode: int) -> None:
        """Sets the permission bits (07777)."""
        self._raw.set_stat(_path(path), mode=mode)

    def chown(self, path: Union[str, "os.PathLike[str]"], uid: int, gid: int) -> None:
        """Sets the owner and group; -1 leaves one as it is (like
        ``os.chown``)."""
        self._raw.set_stat(
            _path(path),
            uid=None if uid == -1 else uid,
            gid=None if gid == -1 else gid,
        )

    def utime(
        self,
        path: Union[str, "os.PathLike[str]"],
        times: Optional[Tuple[float, float]] = None,
        *,
        ns: Optional[Tuple[int, int]] = None,
    ) -> None:
        """Sets the access and modification times like ``os.utime``:
        ``times`` in seconds, ``ns`` in nanoseconds, neither for now."""
        p = _path(path)
        if times is not None and ns is not None:
            raise ValueError("utime: give times or ns, not both")
        if ns is not None:
            self._raw.set_stat(p, atime_ns=ns[0], mtime_ns=ns[1])
        elif times is not None:
            self._raw.set_stat(p, atime_ns=int(times[0] * 1e9), mtime_ns=int(times[1] * 1e9))
        else:
            self._raw.set_stat(p, atime_now=True, mtime_now=True)

    def getxattr(self, path: Union[str, "os.PathLike[str]"], attribute: str) -> bytes:
        """The value of an extended attribute (``pstorage.NoData`` if it is
        not set)."""
        return self._raw.get_xattr(_path(path), attribute)

    def listxattr(self, path: Union[str, "os.PathLike[str]"]) -> List[str]:
        """The names of the extended attributes, sorted."""
        return self._raw.list_xattrs(_path(path))

    def setxattr(
        self, path: Union[str, "os.PathLike[str]"], attribute: str, value: bytes, flags: int = 0
    ) -> None:
        """Sets an extended attribute like ``os.setxattr``: ``flags`` is 0,
        ``os.XATTR_CREATE`` or ``os.XATTR_REPLACE``. Names: ``user.*``,
        ``trusted.*``, ``security.*``; at most 64 KiB per node."""
        how = {0: "any", os.XATTR_CREATE: "create", os.XATTR_REPLACE: "replace"}.get(flags)
        if how is None:
            raise _errors.InvalidArgument(errno.EINVAL, f"setxattr: unknown flags {flags:#x}")
        self._raw.set_xattr(_path(path), attribute, bytes(value), how)

    def removexattr(self, path: Union[str, "os.PathLike[str]"], attribute: str) -> None:
        """Removes an extended attribute."""
        self._raw.remove_xattr(_path(path), attribute)

    def verify(self, path: Union[str, "os.PathLike[str]"], *, repair: bool = False) -> Dict[str, Any]:
        """Compares every replica of every chunk of a file block by block
        (``pstorage verify``); with ``repair``, rewrites each damaged range
        from a good replica. Returns a dict: ``chunks``, ``replicas``,
        ``bytes_read``, ``problems`` and ``repaired`` (lists of
        descriptions; ``problems`` empty when every replica agrees)."""
        return self._raw.verify(_path(path), repair)

    def get_attr(self, path: Union[str, "os.PathLike[str]"]) -> Attrs:
        """The replication and chunk-size attributes of a file or directory."""
        return self._raw.get_attr(_path(path))

    def set_attr(
        self,
        path: Union[str, "os.PathLike[str]"],
        *,
        replicas: Union[int, str, None] = None,
        chunk_size: Optional[int] = None,
        recursive: bool = False,
    ) -> None:
        """Changes attributes: ``replicas`` as ``3``, ``"3"`` or ``"3:2"``
        (NORM:MIN; MIN defaults to NORM/2+1), ``chunk_size`` in bytes (for
        files created later), on everything below ``path`` if ``recursive``."""
        r = None if replicas is None else str(replicas)
        self._raw.set_attr(_path(path), r, chunk_size, recursive)

    def status(self) -> ClusterStatus:
        """The cluster's status: health, servers, space, chunk counts."""
        return self._raw.status()

    # -- lifetime ---------------------------------------------------------

    def close(self) -> None:
        """Closes every file still open through this cluster (flushing and
        releasing its lease), then disconnects. Raises the first error of
        those closes after doing all of them. Closing again does nothing."""
        first: Optional[BaseException] = None
        for f in list(self._files):
            try:
                f.close()
            except Exception as e:  # keep closing the others
                first = first or e
        self._files.clear()
        self._raw.close()
        if first is not None:
            raise first

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()
