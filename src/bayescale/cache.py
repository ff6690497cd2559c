"""Persistent compilation cache: compiled programs kept on disk across processes.

The first fit in a process pays for XLA compilation (about 11 s of a 19 s cold
fit on 2 CPU cores); with JAX's persistent compilation cache a second process
reads the programs back instead. bayescale switches the cache on the first time
it fits (never at import), in the user's cache folder
(``platformdirs.user_cache_dir("bayescale")/jax``), unless

- JAX's cache is already configured (``jax_compilation_cache_dir`` set, by
  ``jax.config.update`` or the ``JAX_COMPILATION_CACHE_DIR`` variable): yours is used;
- the variable ``BAYESCALE_COMPILATION_CACHE`` is ``0``, ``off`` or ``false``
  (or a folder, to use that one instead);
- :func:`disable` was called.

JAX writes each entry to a temporary file and renames it into place and, with a
size bound set (as here), guards the folder with a file lock (``filelock``), so
several processes can share one folder. ``bayescale info`` prints the location.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import platformdirs

__all__ = ["ENV", "enable", "disable", "location", "ensure"]

ENV = "BAYESCALE_COMPILATION_CACHE"
"""Environment variable: ``0``/``off``/``false`` to opt out, or a folder for the cache."""
MAX_BYTES = 2**30
"""Size bound of a cache bayescale switched on (least recently used entries go first)."""
_OFF = ("0", "off", "false", "no")
_state = {"decided": False}


def default_location() -> Path:
    """``platformdirs.user_cache_dir("bayescale")/jax``, or the folder named by :data:`ENV`."""
    value = os.environ.get(ENV, "").strip()
    if value and value.lower() not in _OFF + ("1", "on", "true", "yes"):
        return Path(value).expanduser()
    return Path(platformdirs.user_cache_dir("bayescale")) / "jax"


def enable(path: str | os.PathLike[str] | None = None) -> Path:
    """Switch JAX's persistent compilation cache on, in ``path`` (default :func:`default_location`).

    Programs that take any time to compile are cached (JAX's default skips those
    under one second, which together are several seconds of a cold fit), up to
    :data:`MAX_BYTES` on disk.

    Returns:
        The cache folder.
    """
    folder = Path(path).expanduser() if path is not None else default_location()
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    _state["decided"] = True
    return folder


def disable() -> None:
    """Keep bayescale from switching the cache on (a cache you configured yourself stays)."""
    _state["decided"] = True


def location() -> Path | None:
    """The folder JAX caches compiled programs in now, or ``None`` when the cache is off."""
    folder = jax.config.jax_compilation_cache_dir
    return Path(folder) if folder else None


def ensure() -> Path | None:
    """Switch the cache on at the first fit unless the user configured JAX's cache or opted out.

    Returns:
        The cache folder in use, or ``None``.
    """
    if not _state["decided"]:
        _state["decided"] = True
        opted_out = os.environ.get(ENV, "").strip().lower() in _OFF
        if not opted_out and not jax.config.jax_compilation_cache_dir:
            enable()
    return location()
