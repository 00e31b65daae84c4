# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every task's worker would otherwise compute again: the compiled code of the modules the connection plugin
imports, and its parsed option definitions.

Private to this collection; controller-only (plugin_utils is never shipped to targets). Standard library only.

ansible-core's collection loader compiles collection Python from source in every forked worker (it keeps no
bytecode), and the plugin's option definitions come from YAML. Both are kept here, per user, in
``~/.ansible/natsops/cache`` (mode 0700, owned by the user, else nothing is kept): one file per module (or value)
and install path, holding the SHA-256 of what it was made from (source, Python's bytecode magic) and of its own
content. Anything that does not match exactly, cannot be read or written, is simply computed again, so the cache
changes speed only, never what runs.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import marshal
import os
import stat
import sys
import tempfile
from types import CodeType, ModuleType
from typing import Any, Callable, Iterable, Optional

PLUGINS = "ansible_collections.natsops.fleet.plugins."
_DIGEST = 32  # bytes of a SHA-256
# what compiled code depends on besides its source and file name
_INTERPRETER = b"%s\0%s\0%d\0" % (sys.implementation.cache_tag.encode("ascii"), importlib.util.MAGIC_NUMBER, sys.flags.optimize)


class NotPrivateError(Exception):
    """A directory that should be this user's alone is not."""


def private_dir(*parts: str) -> str:
    """``~/.ansible/natsops/<parts>``, created with mode 0700. Raises NotPrivateError when it is not this user's
    alone, OSError when it cannot be made."""
    path = os.path.join(os.path.expanduser("~"), ".ansible", "natsops", *parts)
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise NotPrivateError("%s must belong to this user with mode 0700" % path)
    return path


def _cache_dir() -> Optional[str]:
    try:
        return private_dir("cache")
    except (OSError, NotPrivateError):
        return None


def _entry(directory: str, name: str, origin: str) -> str:
    """The cache file of ``name`` made from ``origin`` (a path): one per install, replaced when its source changes."""
    where = hashlib.sha256(origin.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return os.path.join(directory, "%s-%s-%s" % (name, sys.implementation.cache_tag, where))


def _read(path: str, key: bytes) -> Optional[bytes]:
    """The content of the cache file ``path`` when it was made for ``key`` and is intact, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
                return None  # only a regular file this user wrote (the directory is checked to be private too)
            data = handle.read()
    except OSError:
        return None
    body = data[2 * _DIGEST:]
    if data[:_DIGEST] != key or data[_DIGEST:2 * _DIGEST] != hashlib.sha256(body).digest():
        return None
    return body


def _write(path: str, key: bytes, body: bytes) -> None:
    """Replace the cache file ``path`` at once (workers of one run write concurrently); failures are ignored."""
    directory = os.path.dirname(path)
    try:
        fd, temp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(key + hashlib.sha256(body).digest() + body)
        os.replace(temp, path)
    except OSError:
        try:
            os.unlink(temp)
        except OSError:
            pass


def _code(directory: str, fullname: str, path: str, source: bytes) -> CodeType:
    """The code of ``source`` as the collection loader compiles it (file name ``path``), from the cache if kept."""
    key = hashlib.sha256(_INTERPRETER + path.encode("utf-8", "surrogateescape") + b"\0" + source).digest()
    entry = _entry(directory, fullname, path)
    body = _read(entry, key)
    if body is not None:
        try:
            code = marshal.loads(body)
        except (EOFError, ValueError, TypeError):
            code = None
        if isinstance(code, CodeType):
            return code
    code = compile(source, path, "exec", flags=0, dont_inherit=True)
    _write(entry, key, marshal.dumps(code))
    return code


class _CodeLoader:
    """An importlib loader that runs code already compiled."""

    def __init__(self, code: CodeType) -> None:
        self._code = code

    def create_module(self, spec: Any) -> None:  # pylint: disable=unused-argument
        return None  # the default module

    def exec_module(self, module: ModuleType) -> None:
        exec(self._code, module.__dict__)  # pylint: disable=exec-used  # nosec: this collection's own module


def source_path(fullname: str) -> Optional[str]:
    """The source file the collection loader would import for ``fullname`` (the first on its package's path)."""
    parent, _dot, leaf = fullname.rpartition(".")
    package = importlib.import_module(parent)
    for base in getattr(package, "__path__", None) or ():
        path = os.path.join(base, leaf + ".py")
        if os.path.isfile(path):
            return path
    return None


def _import(directory: str, fullname: str) -> bool:
    """Import ``fullname`` with its code from the cache; False (and nothing imported) when that is not possible."""
    path = source_path(fullname)
    if path is None:
        return False
    with open(path, "rb") as handle:
        source = handle.read()
    code = _code(directory, fullname, path, source)
    spec = importlib.util.spec_from_file_location(fullname, path, loader=_CodeLoader(code))
    if spec is None:
        return False
    module = importlib.util.module_from_spec(spec)
    sys.modules[fullname] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(fullname, None)
        raise
    parent, _dot, leaf = fullname.rpartition(".")
    setattr(sys.modules[parent], leaf, module)
    return True


def preload(names: Iterable[str]) -> None:
    """Import this collection's modules ``names`` (below ``plugins.``, each after those it imports) with cached code.

    Speed only: the importer's own import statements follow and find them loaded. Whatever cannot be loaded this way
    (no private cache directory, a missing file, an error in the module) is left to those import statements, which
    then load it, or fail, exactly as without this."""
    directory = _cache_dir()
    if directory is None:
        return
    for name in names:
        fullname = PLUGINS + name
        if fullname in sys.modules:
            continue
        try:
            if not _import(directory, fullname):
                return
        except Exception:  # pylint: disable=broad-except
            return


def cached_value(name: str, origin: str, key_parts: Iterable[bytes], make: Callable[[], Any],
                 valid: Callable[[Any], bool] = lambda value: True) -> Any:
    """``make()``, kept across processes: its result is marshalled into the cache under ``name`` for the install
    ``origin`` (a path) and used again while ``key_parts`` are unchanged and ``valid(value)`` holds (for what the
    value says it depends on). A value marshal cannot hold is not kept."""
    directory = _cache_dir()
    key = hashlib.sha256(b"\0".join([_INTERPRETER] + list(key_parts))).digest()
    entry = _entry(directory, name, origin) if directory is not None else None
    body = _read(entry, key) if entry is not None else None
    if body is not None:
        try:
            value = marshal.loads(body)
        except (EOFError, ValueError, TypeError):
            pass
        else:
            if valid(value):
                return value
    value = make()
    if entry is not None:
        try:
            data = marshal.dumps(value)
        except ValueError:
            return value
        _write(entry, key, data)
    return value
