"""What both benchmarks share: a scratch broker and lake, child processes, CPU meters, tables."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from fleetlens.config import Settings, load_settings
from fleetlens.kafka.broker import EmbeddedBroker
from fleetlens.kafka.clients import all_partitions, log_end_offsets, make_consumer
from fleetlens.logging import configure_logging

console = Console(stderr=True, highlight=False)


def say(message: str) -> None:
    """Progress output (stderr, so that stdout holds only the tables)."""
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}")


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine() -> str:
    """One line describing this machine."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total / 2**30
    return (
        f"{cpu}, {psutil.cpu_count()} logical CPUs, {mem:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so that whatever the benchmark started is stopped."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


#: Where children keep their bytecode. This workspace sets PYTHONDONTWRITEBYTECODE=1, which
#: would make every ``python -m fleetlens`` recompile ~900 modules (~3 s of CPU) at start;
#: a deployed service starts from cached bytecode. The cache lives outside the source tree.
PYCACHE = Path(tempfile.gettempdir()) / "fleetlens-bench-pycache"


def child_environment(env: dict[str, str]) -> dict[str, str]:
    """This process's environment plus ``env``, with bytecode cached under :data:`PYCACHE`."""
    out = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return out | {"PYTHONPYCACHEPREFIX": str(PYCACHE)} | env


class Child:
    """A ``python [python_args] -m fleetlens <args>`` child process logging to a file
    (``python_args`` e.g. ``["-m", "cProfile", "-o", path]``)."""

    def __init__(
        self,
        name: str,
        args: list[str],
        *,
        log_dir: Path,
        env: dict[str, str],
        python_args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.started = time.monotonic()
        with self.log_path.open("ab") as log_out:
            self.process = subprocess.Popen(
                [sys.executable, *python_args, "-m", "fleetlens", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_out,
                env=child_environment(env),
            )
        self.ps = psutil.Process(self.process.pid)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not finish in time; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


class Scratch:
    """A throw-away FleetLens installation: broker on a free loopback port, lake, runtime dir.

    The ``FLEETLENS_*`` variables are set in this process while the scratch exists (restored
    afterwards) and passed to every child, so that all of them see the same settings.
    """

    def __init__(
        self, name: str, *, keep: bool = False, extra_env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix=f"fleetlens-bench-{name}-"))
        tag = uuid.uuid4().hex[:8]
        self.env = {
            "FLEETLENS_PROFILE": "embedded",
            "FLEETLENS_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
            "FLEETLENS_KAFKA__TOPICS__METRICS__NAME": f"bench-{tag}.metrics",
            "FLEETLENS_KAFKA__TOPICS__DLQ__NAME": f"bench-{tag}.dlq",
            "FLEETLENS_KAFKA__TOPICS__AGG1M__NAME": f"bench-{tag}.agg1m",
            "FLEETLENS_KAFKA__TOPICS__ALERTS__NAME": f"bench-{tag}.alerts",
            "FLEETLENS_ARCHIVE__GROUP_ID": f"bench-archiver-{tag}",
            "FLEETLENS_LAKE__ROOT": str(self.root / "lake"),
            "FLEETLENS_RUNTIME_DIR": str(self.root / "run"),
            "FLEETLENS_COLLECTOR__HOST": "127.0.0.1",
            "FLEETLENS_COLLECTOR__PORT": str(free_port()),
            "FLEETLENS_LOG__FORMAT": "json",
        } | (extra_env or {})
        self._saved_env: dict[str, str | None] = {}
        self._children: list[Child] = []
        self._broker: EmbeddedBroker | None = None
        self._signals = _terminate_as_interrupt()
        self.settings: Settings
        self.broker_pid: int | None = None

    def __enter__(self) -> Scratch:
        self._signals.__enter__()
        try:
            for key, value in self.env.items():
                self._saved_env[key] = os.environ.get(key)
                os.environ[key] = value
            self.settings = load_settings()
            configure_logging(self.settings)  # FleetLens' own log lines go to stderr
            self._broker = EmbeddedBroker(self.settings)
            say(f"starting the embedded broker on {self.settings.kafka.bootstrap_servers}")
            status = self._broker.start()
            self.broker_pid = status.pid
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            for child in reversed(self._children):
                child.stop()
            if self._broker is not None:
                self._broker.stop()
                say("broker stopped")
        finally:
            for key, old in self._saved_env.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old
            if self.keep:
                say(f"scratch directory kept: {self.root}")
            else:
                shutil.rmtree(self.root, ignore_errors=True)
            self._signals.__exit__(exc_type, exc, tb)

    @property
    def log_dir(self) -> Path:
        path = self.root / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def spawn(
        self,
        name: str,
        args: list[str],
        env: dict[str, str] | None = None,
        python_args: Sequence[str] = (),
    ) -> Child:
        """Start ``python [python_args] -m fleetlens <args>``; it is stopped when the scratch
        ends."""
        child = Child(
            name, args, log_dir=self.log_dir, env=self.env | (env or {}), python_args=python_args
        )
        self._children.append(child)
        return child

    def topic_records(self, topic: str | None = None) -> int:
        """Records on ``topic`` (default: the metrics topic), summed over partitions."""
        topic = topic or self.settings.kafka.topics.metrics.name
        consumer = make_consumer(self.settings.kafka, group_id=None)
        try:
            partitions = all_partitions(consumer, topic)
            return sum(log_end_offsets(consumer, partitions).values())
        finally:
            consumer.close()


class CpuMeter:
    """CPU seconds (user + system, all threads) that some processes use between two points,
    and what the whole machine did meanwhile (to tell how much other load there was)."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items() if pid}
        self._procs["bench"] = psutil.Process()
        self._start: dict[str, float] = {}
        self._machine: Any = None
        self._wall = 0.0

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system)

    def start(self) -> None:
        self._wall = time.monotonic()
        self._machine = psutil.cpu_times()
        self._start = {name: self._cpu(p) for name, p in self._procs.items()}

    def stop(self) -> dict[str, float]:
        """Each process's share of one core since :meth:`start` (1.0 = one full core), and
        ``machine`` (all cores busy, excluding steal) and ``steal`` (time the hypervisor gave
        to other guests), in cores too."""
        wall = max(time.monotonic() - self._wall, 1e-9)
        shares = {
            name: (self._cpu(p) - self._start[name]) / wall for name, p in self._procs.items()
        }
        now = psutil.cpu_times()
        busy = sum(
            getattr(now, f, 0.0) - getattr(self._machine, f, 0.0)
            for f in ("user", "nice", "system", "irq", "softirq")
        )
        shares["machine"] = busy / wall
        shares["steal"] = (getattr(now, "steal", 0.0) - getattr(self._machine, "steal", 0.0)) / wall
        return shares


def tree_rss(process: psutil.Process) -> int:
    """The summed RSS of a process and all its descendants (bytes)."""
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:  # the process is gone
        return 0
    total = 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def other_load(cpu: dict[str, float], *ours: float) -> str:
    """CPU the machine spent outside the benchmark's own processes, and steal, as text."""
    own = sum(v for k, v in cpu.items() if k not in ("machine", "steal")) + sum(ours)
    others = max(0.0, cpu["machine"] - own)
    return f"{others * 100:.0f} % (+{cpu['steal'] * 100:.0f} % steal)"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[rank]


@dataclass
class Report:
    """A table of results plus notes, printed with rich or as Markdown."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        self.rows.append([str(c) for c in cells])

    def print(self, *, markdown: bool = False) -> None:
        out = Console(highlight=False, width=200)
        if markdown:
            print(f"\n### {self.title}\n")
            print("| " + " | ".join(self.columns) + " |")
            aligns = ["---"] + ["---:"] * (len(self.columns) - 1)
            print("|" + "|".join(aligns) + "|")
            for row in self.rows:
                print("| " + " | ".join(row) + " |")
            if self.notes:
                print()
                for note in self.notes:
                    print(f"- {note}")
            return
        table = Table(title=self.title, title_justify="left")
        for i, column in enumerate(self.columns):
            table.add_column(column, justify="left" if i == 0 else "right")
        for row in self.rows:
            table.add_row(*row)
        out.print(table)
        for note in self.notes:
            out.print(f"  • {note}")


#: What a table cell holds where a figure does not apply.
NA = "n/a"


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def fmt_cores(share: float) -> str:
    return f"{share * 100:.0f} %"
