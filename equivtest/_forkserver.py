"""Imported by the fork server of :mod:`equivtest.parallel` (last in its ``FORKSERVER_PRELOAD``), and by
nothing else.

The server only forks ranks, and each rank leaves through ``os._exit``; so when its parent goes away the
server leaves the same way, without the interpreter's teardown of the frameworks it preloaded.  That
teardown took 1.2 s, measured, during which the server kept its parent's output pipe open, so a pipeline
reading pytest's output waited for it after pytest itself had ended.
"""

import atexit
import os

atexit.register(os._exit, 0)
