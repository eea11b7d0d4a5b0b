"""Files and the network at the lowest layer: ovdet's cache folder, atomic writes, host probes.

Every file ovdet writes for later reading (checkpoints, embedding caches, results, downloads)
goes through :func:`atomic_write`: a unique temporary file in the destination's folder, renamed
over the destination only once complete, so a crash or a kill never leaves a half-written file
under the real name, and two writers never share a temporary file.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import socket
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "can_reach",
    "file_sha256",
    "ovdet_home",
    "publish_dir",
    "unreachable_reason",
]

#: Seconds to wait for a TCP connection before a host counts as unreachable (offline).
CONNECT_TIMEOUT_S = 3.0


def ovdet_home() -> Path:
    """ovdet's cache folder: ``$OVDET_HOME``, default ``~/.cache/ovdet`` (not created here)."""
    return Path(os.environ.get("OVDET_HOME", Path.home() / ".cache" / "ovdet")).expanduser()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Write ``path`` through a unique temporary sibling renamed into place when complete.

    Args:
        path: the destination; its folder is created when missing.
        write: called with the temporary path (which does not exist yet); it must create that
            file (any writer: safetensors, json, a download). When it raises, the temporary file is removed and the error
            propagates; the destination is untouched.

    The file gets the permissions ``open()`` would give it (``0o666`` less the umask), whatever
    mode the writer created the temporary file with.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # unique; created by ``write`` itself
    try:
        write(tmp)
        if not tmp.is_file():
            raise OSError(f"nothing was written for {path}")
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would create it (some writers, e.g. safetensors, use 0600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    """The process's file-creation mask, read without changing it (Linux ``/proc``; else the usual 0o022)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text file."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def publish_dir(tmp: Path, out: Path, complete: Callable[[Path], bool]) -> Path:
    """Rename a finished folder ``tmp`` to ``out`` (same parent folder).

    A complete ``out`` already there (written by a concurrent process) wins and ``tmp`` is left
    for the caller to remove; an incomplete leftover is replaced.

    Args:
        tmp: the finished folder.
        out: its final name.
        complete: whether a folder holds a complete result.
    """
    try:
        os.rename(tmp, out)
        return out
    except OSError:
        if complete(out):
            return out
    if out.exists():
        shutil.rmtree(out)
    os.rename(tmp, out)
    return out


def unreachable_reason(url: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why ``url``'s host does not accept a TCP connection within ``timeout`` seconds, or None.

    Download libraries wait 30 s or more per attempt on a network that silently drops packets;
    this answers within ``timeout``. Behind a proxy for the URL's scheme a direct probe says
    nothing (direct connections may be blocked), so the answer is None and the download itself
    decides. A URL without a host (``file://``) is reachable.
    """
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    if parts.scheme in proxies or "all" in proxies or not parts.hostname:
        return None
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return None
    except OSError as e:
        return f"cannot connect to {parts.hostname}:{port} ({e})"


def can_reach(url: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether ``url``'s host accepts a TCP connection within ``timeout`` s (see :func:`unreachable_reason`)."""
    return unreachable_reason(url, timeout) is None


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, remembered per (absolute path, size, modification time): weight files are large."""
    st = os.stat(path)
    return _sha256_of(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
