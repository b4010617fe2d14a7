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

    The cluster is found in ``conf_dir/<name>`` (``bs.list`` and
    ``auth.key``, written by ``pstorage -c NAME auth-node``); ``conf_dir``
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
