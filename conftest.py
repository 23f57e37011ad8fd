"""Repository-level pytest set-up: the equivtest plugin itself loads through its
``pytest11`` entry point (``pip install -e .``); this file only adds what the
project's own tests use."""

from hypothesis import HealthCheck, settings

pytest_plugins = ["pytester"]

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=30, deadline=None)
settings.load_profile("ci")
