"""Preloaded by the fork server of :mod:`equivtest.parallel`, last in its ``FORKSERVER_PRELOAD``.

The server only forks ranks, and each rank leaves through ``os._exit``.  So when its parent goes away, the
server leaves the same way, without the interpreter's teardown of the frameworks it preloaded.  That
teardown took seconds (docs/performance.md), and the server kept its parent's output pipe open meanwhile:
a pipeline reading pytest's output waited for it after pytest itself had ended.

Imported anywhere else, the module does nothing: only the fork server's own ``main`` may end its process
this way, since an exit handler's ``os._exit(0)`` would replace the exit status of any other.
"""

from __future__ import annotations

import atexit
import os
import sys


def _imported_by_the_fork_server() -> bool:
    """Whether the import runs inside ``multiprocessing.forkserver.main``, which imports the preload list."""
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code.co_name == "main" and frame.f_globals.get("__name__") == "multiprocessing.forkserver":
            return True
        frame = frame.f_back
    return False


if _imported_by_the_fork_server():
    atexit.register(os._exit, 0)
