"""A Spark standalone cluster on this machine: a master and workers from the installed
pyspark distribution, on loopback, for running the batch jobs with ``spark.master`` set to
``spark://127.0.0.1:<port>`` (``fleetlens spark cluster start|stop|status``).

pip's pyspark ships ``bin/spark-class`` but not ``sbin/start-master.sh``, so the daemons are
started with ``spark-class`` directly, each in a session of its own (they outlive the CLI
call), with a pid file and a log under ``<runtime_dir>/spark-cluster/``. ``start`` returns once
the master's JSON (``http://127.0.0.1:<webui_port>/json/``) lists every worker ALIVE.

The command lines and the reading of the master's JSON are pure functions; the
:class:`SparkCluster` class runs them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import psutil
import tenacity

from fleetlens.config import Settings, SparkClusterSettings
from fleetlens.logging import get_logger

__all__ = [
    "HOST",
    "MASTER_CLASS",
    "WORKER_CLASS",
    "ClusterStatus",
    "SparkCluster",
    "alive_workers",
    "application_names",
    "master_command",
    "master_url",
    "spark_home",
    "webui_url",
    "worker_command",
]

log = get_logger("spark_cluster")

#: Every daemon binds here (and so does each executor, through ``SPARK_LOCAL_IP``).
HOST: Final = "127.0.0.1"
MASTER_CLASS: Final = "org.apache.spark.deploy.master.Master"
WORKER_CLASS: Final = "org.apache.spark.deploy.worker.Worker"
_STATE_DIR: Final = "spark-cluster"
_MASTER: Final = "master"


def spark_home() -> Path:
    """The installed pyspark distribution (what ``spark-class`` runs from)."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pyspark is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def master_url(cluster: SparkClusterSettings) -> str:
    """The URL drivers connect to (what ``spark.master`` is set to)."""
    return f"spark://{HOST}:{cluster.master_port}"


def webui_url(cluster: SparkClusterSettings) -> str:
    """The master's web UI; ``/json/`` below it is the cluster's state."""
    return f"http://{HOST}:{cluster.webui_port}"


def master_command(cluster: SparkClusterSettings, home: Path) -> list[str]:
    """The master's command line."""
    return [
        str(home / "bin" / "spark-class"),
        MASTER_CLASS,
        "--host",
        HOST,
        "--port",
        str(cluster.master_port),
        "--webui-port",
        str(cluster.webui_port),
    ]


def worker_command(cluster: SparkClusterSettings, home: Path, work_dir: Path) -> list[str]:
    """A worker's command line; its RPC and web UI ports are picked by the OS (``0``), so
    any number of workers fit next to each other."""
    return [
        str(home / "bin" / "spark-class"),
        WORKER_CLASS,
        master_url(cluster),
        "--cores",
        str(cluster.worker_cores),
        "--memory",
        cluster.worker_memory,
        "--host",
        HOST,
        "--port",
        "0",
        "--webui-port",
        "0",
        "--work-dir",
        str(work_dir),
    ]


def alive_workers(state: Mapping[str, Any]) -> int:
    """How many workers the master's JSON lists as ALIVE (a restarted worker leaves its old
    registration behind as DEAD)."""
    return sum(1 for worker in state.get("workers", []) if worker.get("state") == "ALIVE")


def application_names(state: Mapping[str, Any], which: str = "completedapps") -> list[str]:
    """The names of the master's active (``activeapps``) or completed applications."""
    return [str(app.get("name")) for app in state.get(which, [])]


@dataclass(frozen=True)
class ClusterStatus:
    """What ``fleetlens spark cluster status`` prints."""

    master_url: str
    webui_url: str
    #: Every daemon is running and the master lists every worker ALIVE.
    running: bool
    workers: int
    alive_workers: int
    #: By daemon (``master``, ``worker-1``, …): its pid, or None if it is not running.
    pids: dict[str, int | None] = field(default_factory=dict)
    active_apps: list[str] = field(default_factory=list)
    completed_apps: list[str] = field(default_factory=list)
    state_dir: str = ""


class _NotReadyError(Exception):
    """The master is not serving its state yet, or not every worker is ALIVE."""


class SparkCluster:
    """Starts, stops and inspects the standalone cluster of ``spark.cluster``."""

    def __init__(self, settings: Settings) -> None:
        self._cluster = settings.spark.cluster
        self.state_dir = settings.runtime_dir / _STATE_DIR
        self.master_url = master_url(self._cluster)
        self.webui_url = webui_url(self._cluster)

    @property
    def daemons(self) -> list[str]:
        """The daemons' names, master first."""
        return [_MASTER, *(f"worker-{n}" for n in range(1, self._cluster.workers + 1))]

    def log_file(self, daemon: str) -> Path:
        """Where ``daemon`` writes its output."""
        return self.state_dir / f"{daemon}.log"

    def work_dir(self, daemon: str) -> Path:
        """A worker's work directory: one folder per application, one per executor in it
        (with the executor's stdout and stderr)."""
        return self.state_dir / "work" / daemon

    def _pid_file(self, daemon: str) -> Path:
        return self.state_dir / f"{daemon}.pid"

    def _process(self, daemon: str) -> psutil.Process | None:
        """The running process of ``daemon``'s pid file, if it is still that daemon."""
        try:
            process = psutil.Process(int(self._pid_file(daemon).read_text()))
            expected = MASTER_CLASS if daemon == _MASTER else WORKER_CLASS
            # A recycled pid would belong to some other program.
            if process.is_running() and expected in process.cmdline():
                return process
        except (FileNotFoundError, ValueError, psutil.Error):
            pass
        return None

    def _pid_files(self) -> list[str]:
        """The daemons that have a pid file (more workers than configured, if the setting
        changed since ``start``)."""
        return sorted(p.stem for p in self.state_dir.glob("*.pid"))

    def master_state(self, timeout_s: float = 2.0) -> dict[str, Any] | None:
        """The master's JSON, or None if it does not answer."""
        try:
            response = httpx.get(f"{self.webui_url}/json/", timeout=timeout_s)
            response.raise_for_status()
            state: dict[str, Any] = response.json()
        except (httpx.HTTPError, ValueError):
            return None
        return state

    def start(self) -> ClusterStatus:
        """Start the daemons that are not running, wait until every worker is ALIVE.

        Raises:
            RuntimeError: a port is taken by something else, a daemon exited, or the
                workers were not all ALIVE within ``startup_timeout_s`` (the daemons this
                call started are stopped again).
        """
        missing = [d for d in self.daemons if self._process(d) is None]
        if _MASTER in missing:
            for port in (self._cluster.master_port, self._cluster.webui_port):
                # Spark would quietly bind the next free port instead.
                if _listening(port):
                    raise RuntimeError(
                        f"{HOST}:{port} is taken by a process FleetLens did not start; set "
                        "spark.cluster.master_port and spark.cluster.webui_port to free ports"
                    )
        home = spark_home()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        spawned: dict[str, subprocess.Popen[bytes]] = {}
        for daemon in missing:
            if daemon == _MASTER:
                command = master_command(self._cluster, home)
            else:
                shutil.rmtree(self.work_dir(daemon), ignore_errors=True)
                self.work_dir(daemon).mkdir(parents=True)
                command = worker_command(self._cluster, home, self.work_dir(daemon))
            spawned[daemon] = self._spawn(daemon, command, home)
        try:
            self._wait_until_ready(spawned)
        except Exception:
            # By handle: a daemon still in spark-class's launcher has no JVM command line.
            self._terminate([psutil.Process(p.pid) for p in spawned.values() if p.poll() is None])
            for daemon in spawned:
                self._pid_file(daemon).unlink(missing_ok=True)
            raise
        status = self.status()
        log.info(
            "spark_cluster.ready",
            master_url=self.master_url,
            workers=status.alive_workers,
            started=missing,
        )
        return status

    def _spawn(self, daemon: str, command: list[str], home: Path) -> subprocess.Popen[bytes]:
        environment = {
            **os.environ,
            "SPARK_HOME": str(home),
            # The web UIs bind 0.0.0.0 unless told; executors inherit it from their worker.
            "SPARK_LOCAL_IP": HOST,
            "SPARK_DAEMON_MEMORY": self._cluster.daemon_memory,
        }
        # Truncated per start: the log is that of the running daemon.
        with self.log_file(daemon).open("wb") as out:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,  # outlives the CLI call that started it
            )
        # spark-class execs java: this pid is the daemon's JVM.
        self._pid_file(daemon).write_text(str(process.pid))
        log.info("spark_cluster.spawned", daemon=daemon, pid=process.pid)
        return process

    def _wait_until_ready(self, spawned: Mapping[str, subprocess.Popen[bytes]]) -> None:
        timeout = self._cluster.startup_timeout_s
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(timeout),
            wait=tenacity.wait_fixed(0.5),
            retry=tenacity.retry_if_exception_type(_NotReadyError),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    # Their own exit status, not the pid files: while spark-class execs java
                    # the command line reads empty for a moment.
                    for daemon, process in spawned.items():
                        if process.poll() is not None:
                            raise RuntimeError(
                                f"Spark {daemon} exited; see {self.log_file(daemon)}"
                            )
                    state = self.master_state()
                    if state is None:
                        raise _NotReadyError(f"no answer from {self.webui_url}/json/")
                    alive = alive_workers(state)
                    if alive < self._cluster.workers:
                        raise _NotReadyError(f"{alive} of {self._cluster.workers} workers ALIVE")
        except _NotReadyError as error:
            raise RuntimeError(
                f"Spark cluster at {self.master_url} not ready after {timeout:g} s ({error}); "
                f"see the logs in {self.state_dir}"
            ) from error

    def stop(self) -> list[str]:
        """Stop every daemon with a pid file (SIGTERM, SIGKILL after ``stop_grace_s``), and
        their executors; remove the pid files and the workers' work directories. Returns
        the daemons that were running."""
        daemons = self._pid_files()
        running = {d: p for d in daemons if (p := self._process(d)) is not None}
        self._terminate(list(running.values()))
        for daemon in daemons:
            self._pid_file(daemon).unlink(missing_ok=True)
        shutil.rmtree(self.state_dir / "work", ignore_errors=True)
        if running:
            log.info("spark_cluster.stopped", master_url=self.master_url, daemons=list(running))
        return list(running)

    def _terminate(self, daemons: list[psutil.Process]) -> None:
        # A worker's executors are its children: a killed worker would orphan them.
        processes = [p for daemon in daemons for p in (daemon, *_children(daemon))]
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(processes, timeout=self._cluster.stop_grace_s)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(alive, timeout=self._cluster.stop_grace_s)

    def status(self) -> ClusterStatus:
        """The daemons' pids and what the master reports."""
        names = sorted(set(self.daemons) | set(self._pid_files()), key=_order)
        pids = {d: (p.pid if (p := self._process(d)) else None) for d in names}
        state = self.master_state() or {}
        alive = alive_workers(state)
        return ClusterStatus(
            master_url=self.master_url,
            webui_url=self.webui_url,
            running=all(pids.values())
            and state.get("status") == "ALIVE"
            and alive >= self._cluster.workers,
            workers=self._cluster.workers,
            alive_workers=alive,
            pids=pids,
            active_apps=application_names(state, "activeapps"),
            completed_apps=application_names(state),
            state_dir=str(self.state_dir),
        )


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        children: list[psutil.Process] = process.children(recursive=True)
    except psutil.Error:
        return []
    return children


def _order(daemon: str) -> tuple[int, int]:
    """Sort key: the master, then the workers by number."""
    _, _, number = daemon.partition("-")
    return (0, 0) if daemon == _MASTER else (1, int(number) if number.isdigit() else 0)
