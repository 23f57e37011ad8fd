"""Files written atomically: a temporary file beside the target, then one rename.

A reader (or a run interrupted half-way) sees the old file or the new one,
complete, never a half-written one.  The file gets the mode a plain ``open()``
would give it (0666 less the umask), not ``mkstemp``'s private 0600, so a
colleague or a CI artifact server can read a report.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def umask() -> int:
    """The process's umask (read by setting it, then put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path`` in one rename.

    On any exception (``KeyboardInterrupt`` included) the temporary file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # the writer may have replaced the file: set the mode just before
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (flushed to disk before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)
