"""A local Ray start that times out (a loaded machine, ray-project/ray#65983) is tried again.

The failure is injected at Ray's own entry point with Ray's own message: a real timeout needs a
machine loaded past Ray's fixed waits, which a test cannot arrange reliably.
"""

import logging
import subprocess
import sys
import time

import pytest

from embedder.core.errors import EmbedderError
from embedder.features.ray import start_local_ray

TIMEOUT = Exception(
    "The current node timed out during startup. This could happen because some of the raylet "
    "failed to startup or the GCS has become overloaded."
)


class RayStarts:
    """Ray's init/shutdown pair, failing the first `failures` starts with `error`."""

    __file__ = "/nonexistent/ray/__init__.py"  # where its processes would run from

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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_what_a_timed_out_start_left_running_is_stopped(tmp_path):
    """A child process run from "Ray's package" (a sleeping script under a folder standing in
    for it) is killed before the next try; a child from elsewhere is left alone."""
    (tmp_path / "ray").mkdir()
    for folder in ("ray", "other"):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "node.py").write_text("import time; time.sleep(60)")
    ray_child = subprocess.Popen([sys.executable, str(tmp_path / "ray" / "node.py")])
    other_child = subprocess.Popen([sys.executable, str(tmp_path / "other" / "node.py")])
    try:
        time.sleep(0.2)  # let both exec
        ray = RayStarts(failures=1)
        ray.__file__ = str(tmp_path / "ray" / "__init__.py")
        start_local_ray(ray)
        assert ray_child.wait(timeout=10) == -9
        assert other_child.poll() is None
    finally:
        for child in (ray_child, other_child):
            child.kill()
            child.wait()
