"""A Ray cluster of several nodes on this machine, each node in a network namespace of its own.

The nodes' namespaces are joined by veth pairs to a bridge in a hub namespace, all created
here: every packet of the cluster stays inside namespaces this helper made, so nothing reaches
(or is reached through) the machine's own interfaces. Ray 2.60 advertises the machine's
external address for its GCS even when told 127.0.0.1; in a namespace whose only interfaces
are loopback and its veth, there is no external address to advertise. Needs root (`ip netns`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
SUBNET = "10.77.{}.{}"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def can_make_namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"embprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
        return True
    except (subprocess.CalledProcessError, OSError):
        return False


class NamespaceCluster:
    """`nodes` Ray nodes: node 0 the head (no CPUs, so no actor runs there), the others one
    CPU each. `exec(...)` runs a command in a node's namespace (the driver runs on the head's),
    `kill(i)` kills every process of node i at once, as a machine that dies would."""

    def __init__(self, nodes: int = 3, worker_cpus: int = 1):
        tag = f"{os.getpid() % 100000}"
        self.hub, self.bridge = f"emb{tag}hub", "br0"
        self.names = [f"emb{tag}n{i}" for i in range(nodes)]
        self.net = os.getpid() % 200 + 20  # a /24 of its own, should two runs overlap
        self.addresses = [SUBNET.format(self.net, i + 1) for i in range(nodes)]
        self.worker_cpus = worker_cpus
        self.head = f"{self.addresses[0]}:6379"
        # Ray's token authentication: the same shared secret on every node and driver.
        self.auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
        self.temp_dir = Path(tempfile.mkdtemp(prefix=f"ray{tag}."))

    def exec(self, node: int, command: list[str], **kwargs) -> subprocess.Popen:
        """`command` in node's namespace, with the cluster's token (every node and driver)."""
        env = {**os.environ, **self.auth_env, **kwargs.pop("env", {})}
        return subprocess.Popen(["ip", "netns", "exec", self.names[node], *command], env=env,
                                **kwargs)  # fmt: skip

    def _ray_start(self, node: int, *flags: str) -> None:
        # A temp dir of the cluster's own: Ray writes the head's address there
        # (ray_current_cluster), and in /tmp/ray a later local ray.init() would join it.
        done = self.exec(node, [RAY, "start", "--node-ip-address", self.addresses[node],
                                "--temp-dir", str(self.temp_dir), "--disable-usage-stats",
                                *flags],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        out, _ = done.communicate(timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"ray start on node {node} failed: {out[-2000:]}")

    def start(self) -> NamespaceCluster:
        _ip("netns", "add", self.hub)
        _ip("-n", self.hub, "link", "set", "lo", "up")
        _ip("-n", self.hub, "link", "add", self.bridge, "type", "bridge")
        _ip("-n", self.hub, "link", "set", self.bridge, "up")
        for i, name in enumerate(self.names):
            _ip("netns", "add", name)
            _ip("-n", name, "link", "set", "lo", "up")
            inside, outside = f"v{i}", f"{name[-6:]}p"
            _ip("link", "add", inside, "netns", name, "type", "veth",
                "peer", "name", outside, "netns", self.hub)  # fmt: skip
            _ip("-n", name, "addr", "add", f"{self.addresses[i]}/24", "dev", inside)
            _ip("-n", name, "link", "set", inside, "up")
            _ip("-n", self.hub, "link", "set", outside, "master", self.bridge)
            _ip("-n", self.hub, "link", "set", outside, "up")
        self._ray_start(0, "--head", "--port", "6379", "--num-cpus", "0",
                        "--include-dashboard", "false")  # fmt: skip
        for i in range(1, len(self.names)):
            self._ray_start(i, "--address", self.head, "--num-cpus", str(self.worker_cpus))
        return self

    def pids(self, node: int) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.names[node]], capture_output=True,
                             text=True).stdout  # fmt: skip
        return [int(p) for p in out.split()]

    def kill(self, node: int) -> int:
        pids = self.pids(node)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def stop(self) -> None:
        for node in range(len(self.names)):
            self.kill(node)
        time.sleep(0.5)
        for name in [*self.names, self.hub]:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> NamespaceCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
