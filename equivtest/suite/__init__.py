"""equivtest's verification suite, shipped in the package.

Run it from any directory on an installed equivtest::

    pytest --pyargs equivtest.suite --backend=torch --device=cuda

(``equivtest.plugin`` sees the suite named on the command line and loads
:mod:`equivtest.suite.plugin`, which adds ``--backend``, ``--device`` and
``--features`` for that run only.)
"""
