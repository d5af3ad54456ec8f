"""A local Ray start that times out (a loaded machine, ray-project/ray#65983) is tried again.

The failure is injected at Ray's own entry point with Ray's own message: a real timeout needs a
machine loaded past Ray's fixed waits, which a test cannot arrange reliably.
"""

import logging

import pytest

from embedder.core.errors import EmbedderError
from embedder.features.ray import start_local_ray

TIMEOUT = Exception(
    "The current node timed out during startup. This could happen because some of the raylet "
    "failed to startup or the GCS has become overloaded."
)


class RayStarts:
    """Ray's init/shutdown pair, failing the first `failures` starts with `error`."""

    def __init__(self, failures, error=TIMEOUT):
        self.failures, self.error, self.calls = failures, error, []

    def init(self, **kwargs):
        self.calls.append("init")
        if self.calls.count("init") <= self.failures:
            raise self.error

    def shutdown(self):
        self.calls.append("shutdown")


def test_a_start_that_timed_out_is_tried_again(caplog):
    ray = RayStarts(failures=1)
    with caplog.at_level(logging.WARNING):
        start_local_ray(ray)
    assert ray.calls == ["init", "shutdown", "init"]
    assert "timed out during startup" in caplog.text


def test_two_timeouts_end_in_an_error_that_says_what_to_do():
    ray = RayStarts(failures=2)
    with pytest.raises(EmbedderError, match="ray start --head.*--ray-address auto"):
        start_local_ray(ray)
    assert ray.calls == ["init", "shutdown", "init", "shutdown"]


def test_other_start_errors_are_not_retried():
    ray = RayStarts(failures=1, error=ValueError("num_cpus must be positive"))
    with pytest.raises(ValueError, match="num_cpus"):
        start_local_ray(ray)
    assert ray.calls == ["init"]
