"""The Keras worker's life cycle, with a stand-in for its process (no framework, no process): it starts once,
a prestarted one runs niced, stopping closes its connection whatever state the process is in, and a worker that
died or was stopped is reaped and replaced on the next call.  And how torch's fork server ends (a real one, with
a stand-in for a framework's exit handler)."""

from __future__ import annotations

import multiprocessing
import subprocess

import pytest

from equivtest.backends.keras import worker as kw


class StandIn:
    """What the worker's ``subprocess.Popen`` gives, without a process: alive until it exits or is killed."""

    def __init__(self, args):
        self.args, self.code, self.hangs, self.reaped = list(args), None, False, False

    def poll(self):
        return self.code

    def wait(self, timeout=None):
        if self.code is None and self.hangs:
            raise subprocess.TimeoutExpired(self.args, timeout)
        self.code = 0 if self.code is None else self.code
        self.reaped = True
        return self.code

    def kill(self):
        self.code, self.hangs = -9, False


@pytest.fixture
def spawned(monkeypatch):
    """Every stand-in the worker "starts", in order."""
    made = []
    monkeypatch.setattr(kw.subprocess, "Popen", lambda args, **_: made.append(StandIn(args)) or made[-1])
    monkeypatch.setattr(kw.atexit, "register", lambda *_: None)
    return made


def test_a_worker_starts_once_and_a_prestarted_one_runs_niced(spawned):
    be = kw.Backend("keras-torch")
    be.start(background=True)
    be.start()
    assert len(spawned) == 1 and spawned[0].args[-1] == str(kw.BACKGROUND_NICE)
    be.close()
    be.start()  # on demand: no niceness argument
    assert len(spawned) == 2 and spawned[1].args[-1] != str(kw.BACKGROUND_NICE)
    be.close()


def test_a_worker_that_died_is_reaped_and_replaced(spawned):
    be = kw.Backend("keras-torch")
    be.start()
    spawned[0].code = 1  # it crashed (killed for memory, say)
    be.close()
    assert spawned[0].reaped and be._conn is None and be._proc is None  # its connection closed too
    be.start()
    assert len(spawned) == 2 and be._running()
    be.close()


def test_a_stopped_worker_is_reaped_before_the_next_starts(spawned):
    be = kw.Backend("keras-torch")
    be.start()
    be.stop()  # asked to exit, not waited for (close_workers asks every worker first)
    assert be._conn is None and not be._running()
    be.start()
    assert spawned[0].reaped and len(spawned) == 2
    be.close()


def test_a_worker_that_ignores_the_request_to_stop_is_killed(spawned):
    be = kw.Backend("keras-torch")
    be.start()
    spawned[0].hangs = True
    be.close()
    assert spawned[0].code == -9 and spawned[0].reaped and be._proc is None


# ------------------------------------------------------------------------------ torch's fork server
#: a fork server started with a stand-in for a framework's exit handler (it prints), then the given preloads
FORK_SERVER_SCRIPT = """
import multiprocessing as mp
import sys


def nothing():
    pass


if __name__ == "__main__":
    mp.set_forkserver_preload(["standin_teardown", *sys.argv[1:]])
    process = mp.get_context("forkserver").Process(target=nothing)
    process.start()
    process.join()
"""


def _run_a_fork_server(tmp_path, *preload):
    import os
    import sys

    (tmp_path / "standin_teardown.py").write_text("import atexit\natexit.register(print, 'teardown ran', flush=True)\n")
    script = tmp_path / "serve.py"
    script.write_text(FORK_SERVER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    # the server inherits the output pipe: what it prints as it exits is read too (run() waits for the pipe's end)
    return subprocess.run([sys.executable, str(script), *preload], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(),
                    reason="the platform has no fork server: the ranks are spawned")
def test_the_fork_server_leaves_without_the_teardown_of_what_it_preloaded(tmp_path):
    """The fork server preloads :mod:`equivtest._forkserver` after the frameworks: it then leaves through
    ``os._exit``, so no exit handler registered before (a framework's; here a stand-in that prints) runs.  The
    control: the same server without the module runs the stand-in's handler."""
    from equivtest.parallel import FORKSERVER_PRELOAD

    assert FORKSERVER_PRELOAD[-1] == "equivtest._forkserver"  # after every framework it preloads
    done = _run_a_fork_server(tmp_path, "equivtest._forkserver")
    assert done.returncode == 0, done.stderr
    assert "teardown ran" not in done.stdout
    control = _run_a_fork_server(tmp_path)
    assert control.returncode == 0, control.stderr
    assert control.stdout.strip() == "teardown ran"


def test_the_fork_server_module_imported_elsewhere_changes_nothing():
    """Outside the fork server the module registers nothing: a program that imports it keeps its own exit
    status and its exit handlers."""
    import sys

    code = "import atexit, sys; atexit.register(print, 'teardown ran'); import equivtest._forkserver; sys.exit(3)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip() == "teardown ran"
