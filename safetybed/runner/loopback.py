"""A real two-node Ray cluster on the loopback interface, for the fault tests and ``safetybed bench executors``.

Each node is started with ``ray start ... --block`` exactly as a user would (head: ``--head --node-ip-address
127.0.0.1``; worker: ``--address 127.0.0.1:PORT``), with token authentication on (``RAY_AUTH_MODE=token``, one
token file shared through ``RAY_AUTH_TOKEN_PATH``), and each inside its own PID namespace
(``unshare --pid --fork --kill-child --mount-proc``): stopping a node is one ``SIGKILL`` of its ``unshare``
process, which takes every process of that node with it, and nothing is ever looked up or ended by name.

Ray binds the machine's outside interface even when told 127.0.0.1, so the whole cluster must live in a
private network namespace: :func:`in_private_network` checks that the only interface is ``lo``, and
:func:`reexec_in_namespace` re-runs a command inside ``unshare --net --pid --fork --kill-child --mount-proc``
(root needed) with ``lo`` up.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetybed.errors import InputError

NAMESPACE_COMMAND = ("unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc")
NODE_NAMESPACE = ("unshare", "--pid", "--fork", "--kill-child", "--mount-proc")


def in_private_network() -> bool:
    """True inside a network namespace whose only interface is the loopback one (asked of the kernel, not /sys)."""
    try:
        return [name for _index, name in socket.if_nameindex()] == ["lo"]
    except OSError:
        return False


def namespaces_available() -> str:
    """Empty when this machine can make the namespaces; else why not (for a skip or an error message)."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run([*NAMESPACE_COMMAND, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"cannot create network and PID namespaces here ({probe.stderr.strip() or probe.returncode}); run as root"
    return ""


def reexec_in_namespace(argv: list[str], *, env: dict[str, str] | None = None,
                        timeout_s: float | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` in a new network + PID namespace with ``lo`` up; every process it starts ends with it."""
    why = namespaces_available()
    if why:
        raise InputError(f"loopback cluster: {why}")
    script = 'ip link set lo up && exec "$@"'
    return subprocess.run([*NAMESPACE_COMMAND, "sh", "-c", script, "sh", *argv], env=env, timeout=timeout_s)


def _ray_executable() -> str:
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else "ray"


class LoopbackCluster:
    """A head node and one worker node on 127.0.0.1; use as a context manager inside a private namespace.

    Args:
        head_cpus / worker_cpus: ``--num-cpus`` of each node.
        port: the head's GCS port.
        auth: ``"token"`` (a fresh token, as the README's recipe) or ``"disabled"`` (the trusted-network opt-out).
    """

    def __init__(self, *, head_cpus: int = 1, worker_cpus: int = 1, port: int = 6379, auth: str = "token"):
        if auth not in ("token", "disabled"):
            raise ValueError(f"auth: expected 'token' or 'disabled', got {auth!r}")
        self.head_cpus, self.worker_cpus, self.port, self.auth = head_cpus, worker_cpus, port, auth
        self.address = f"127.0.0.1:{port}"
        # Short: Ray puts unix sockets under it (108-byte limit). Not /tmp/ray, which other Ray users share.
        self.root = Path(tempfile.mkdtemp(prefix="sbray-", dir="/tmp"))
        self.token_path = self.root / "auth_token"
        self.head: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None

    # -- what a client needs -------------------------------------------------------------------------------------
    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a launching process: ``RAY_ADDRESS`` plus the auth settings of the README recipe."""
        env = dict(os.environ if base is None else base)
        env["RAY_ADDRESS"] = self.address
        env["RAY_AUTH_MODE"] = self.auth
        if self.auth == "token":
            env["RAY_AUTH_TOKEN_PATH"] = str(self.token_path)
        else:
            env.pop("RAY_AUTH_TOKEN_PATH", None)
        env.pop("RAY_AUTH_TOKEN", None)
        return env

    # -- nodes ---------------------------------------------------------------------------------------------------
    def _node(self, *args: str, log: str) -> subprocess.Popen:
        handle = (self.root / log).open("wb")
        command = [*NODE_NAMESPACE, _ray_executable(), "start", *args, "--node-ip-address", "127.0.0.1",
                   "--disable-usage-stats", "--block"]
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=self.client_env(),
                                start_new_session=True)

    def start_head(self) -> None:
        self.head = self._node("--head", "--port", str(self.port), "--num-cpus", str(self.head_cpus),
                               "--include-dashboard", "false", "--temp-dir", str(self.root / "ray"),
                               log="head.log")

    def start_worker(self) -> None:
        self.worker = self._node("--address", self.address, "--num-cpus", str(self.worker_cpus), log="worker.log")

    def wait_for_nodes(self, count: int, *, timeout_s: float = 120.0) -> None:
        """Block until ``count`` nodes are alive (asked through a short-lived client, as a user's would be)."""
        probe = ("import ray, sys; ray.init(log_to_driver=False); "
                 "print(sum(1 for n in ray.nodes() if n['Alive'])); ray.shutdown()")
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            for node, name in ((self.head, "head"), (self.worker, "worker")):
                if node is not None and node.poll() is not None:
                    raise RuntimeError(f"loopback cluster: the {name} node exited ({node.returncode}): "
                                       f"{(self.root / f'{name}.log').read_text(errors='replace')[-2000:]}")
            result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                    env=self.client_env(), timeout=120)
            last = (result.stdout.strip().splitlines() or [""])[-1]
            if result.returncode == 0 and last.isdigit() and int(last) >= count:
                return
            time.sleep(1.0)
        raise RuntimeError(f"loopback cluster: {count} nodes not alive after {timeout_s:.0f} s (last: {last!r})")

    def stop_worker(self) -> None:
        """Stop the worker node at once: SIGKILL its namespace, as a machine that loses power."""
        self._kill(self.worker)
        self.worker = None

    def _kill(self, node: subprocess.Popen | None) -> None:
        if node is not None and node.poll() is None:
            os.kill(node.pid, signal.SIGKILL)  # --kill-child: the node's namespace and all in it go too
            node.wait(timeout=30)

    def node_pids(self, which: str) -> set[int]:
        """Process ids (as seen here) of every process in the node's namespace, its ``unshare`` included."""
        node = self.head if which == "head" else self.worker
        if node is None or node.poll() is not None:
            return set()
        return {node.pid} | descendants(node.pid)

    # -- context manager -----------------------------------------------------------------------------------------
    def __enter__(self) -> LoopbackCluster:
        if not in_private_network():
            raise InputError("loopback cluster: not inside a private network namespace (Ray would bind the "
                             "machine's outside interface); run it through reexec_in_namespace / "
                             "safetybed bench executors --loopback")
        if self.auth == "token":
            self.token_path.write_text(secrets.token_hex(32), encoding="utf-8")
            self.token_path.chmod(0o600)
        self.start_head()
        self.wait_for_nodes(1)
        self.start_worker()
        self.wait_for_nodes(2)
        return self

    def __exit__(self, *exc: object) -> None:
        self._kill(self.worker)
        self._kill(self.head)
        shutil.rmtree(self.root, ignore_errors=True)


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from ``/proc/PID/task/*/children``)."""
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
            for child in children:
                if child not in found:
                    found.add(child)
                    frontier.append(child)
    return found


def process_title(pid: int) -> str:
    """The command line of ``pid`` as the process shows it (Ray workers set it to ``ray::TASK_NAME``)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
