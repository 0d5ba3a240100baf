"""What code a long-lived process runs, and whether it is still what is on disk.

A spare proxy (qproxy/proxy/spare.py) imports everything once and forks each job's proxy
from it for as long as it lives. Its identity used to cover qproxy's own files only, so after
a security update of aiohttp, yarl or Python itself the spare kept forking the old code.
Two parts, both cheap enough for a job's start:

- ``interpreter()``: the Python that runs (its version string, and the inode, mtime and size
  of its executable and of the standard library's ``os.py``). Part of the identity a
  prolog sends with a claim: a prolog running an updated interpreter is never served by a
  spare of the old one. ~15 us.
- ``Snapshot``: taken by the spare once everything is imported; ``changed()`` re-checks at
  each claim that no directory holding a loaded module (qproxy's, the standard library's,
  every third-party distribution's: ``sys.modules``) or a file the process has mapped
  (extension modules, libpython, libssl, ...: ``/proc/self/maps``) changed since.
  Versions alone would miss a distribution's security rebuild that keeps its upstream
  version (Debian's ``+deb13u1`` uploads), and the prolog cannot know which modules a
  spare imported without importing them; the spare can. Cost: see ``Snapshot``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

Stamp = tuple[int, int, int]


def _stamp(path: str) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def interpreter() -> str:
    exe = os.path.realpath(sys.executable)
    return f"{sys.version}|{exe}:{_stamp(exe)}|stdlib:{_stamp(os.__file__)}"


def _module_files() -> Iterable[str]:
    for mod in list(sys.modules.values()):
        path = getattr(mod, "__file__", None)
        if isinstance(path, str) and path:
            yield path


def _mapped_files() -> Iterable[str]:
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                fields = line.split(None, 5)
                if len(fields) == 6 and fields[5].startswith("/") and not fields[5].startswith(
                        ("/dev/", "/memfd:", "/proc/", "/SYSV")):
                    yield fields[5].rstrip("\n").removesuffix(" (deleted)")
    except OSError:
        return


def _dir_stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


class Snapshot:
    """The directories holding every loaded module's file and every mapped file, as they
    are now. An installer never rewrites a file in place: pip removes the old files and
    writes new ones, dpkg renames each new file over the old, and either changes the
    directory's mtime. Checking the ~60 directories instead of the ~400 files keeps a claim
    cheap (measured on 2 loaded cores: ~0.3 ms against ~5 ms for the files); the price is
    that an unrelated install into one of them (a new library in /usr/lib/<triplet>) also
    retires the spare, which costs one proxy a cold start."""

    def __init__(self) -> None:
        dirs = {os.path.dirname(p) for p in (*_module_files(), *_mapped_files())}
        self.dirs = {d: s for d in dirs if d and (s := _dir_stamp(d)) is not None}

    def changed(self) -> str | None:
        """The first directory of loaded code that changed since the snapshot, or None."""
        for path, stamp in self.dirs.items():
            if _dir_stamp(path) != stamp:
                return f"{path} changed on disk since the spare started"
        return None
