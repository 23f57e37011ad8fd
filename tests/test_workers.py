"""The Keras worker's life cycle, with a stand-in for its process (no framework, no process): it starts once,
a prestarted one runs niced, stopping closes its connection whatever state the process is in, and a worker that
died or was stopped is reaped and replaced on the next call."""

from __future__ import annotations

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
def test_the_fork_server_leaves_without_the_teardown_of_what_it_preloaded():
    """The fork server imports :mod:`equivtest._forkserver` after the frameworks: from then on the process leaves
    through ``os._exit``, so no exit handler registered before it (torch's, here a stand-in that prints) runs,
    and the exit status is still 0."""
    import sys

    from equivtest.parallel import FORKSERVER_PRELOAD

    assert FORKSERVER_PRELOAD[-1] == "equivtest._forkserver"  # after every framework it preloads
    code = "import atexit; atexit.register(print, 'teardown ran'); import equivtest._forkserver"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "teardown ran" not in done.stdout
    # the control: the same stand-in without the module does run
    ran = subprocess.run([sys.executable, "-c", code.rsplit(";", 1)[0]], capture_output=True, text=True, timeout=60)
    assert ran.stdout.strip() == "teardown ran"
