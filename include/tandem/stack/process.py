"""Background services as process groups: start detached, record the pid, stop the whole group.

Each service runs in its own session (``setsid``), so stopping it signals the process group and
leaves no orphans (Airflow's api-server, for example, forks workers). The pid file records the pid and
the process's start time (psutil): a pid file whose process is gone, or whose pid now belongs to another
process (a reused pid), is stale. It is reported and removed, never trusted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from tandem.errors import ServiceUnavailable, UserError


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # health(timeout) -> True when healthy; None: healthy while the process lives
    health: Callable[[float], bool] | None = None
    port: int | None = None  # checked free before starting
    host: str = "127.0.0.1"

    @property
    def port_env(self) -> str:
        """The TANDEM_*_PORT setting of this service's port (airflow-api-server -> TANDEM_AIRFLOW_PORT)."""
        words = self.name.split("-")
        return f"TANDEM_{(words[1] if words[0] == 'tandem' else words[0]).upper()}_PORT"

    def pidfile(self, run_dir: Path) -> Path:
        return run_dir / f"{self.name}.pid"

    def logfile(self, logs_dir: Path) -> Path:
        return logs_dir / f"{self.name}.log"


@dataclass(frozen=True)
class PidRecord:
    pid: int
    create_time: float | None  # None: a pid file written by an older Tandem (pid only)


def read_pid(pidfile: Path) -> PidRecord | None:
    try:
        text = pidfile.read_text().strip()
    except OSError:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, int):
        return PidRecord(data, None)
    try:
        created = data["create_time"]
        return PidRecord(int(data["pid"]), None if created is None else float(created))
    except (TypeError, KeyError, ValueError):
        return None


def write_pid(pidfile: Path, pid: int) -> None:
    try:
        created = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:  # it exited already: the next read finds it gone
        created = None
    record = {"pid": pid, "create_time": created}
    pidfile.write_text(json.dumps(record) + "\n")


def _why_stale(record: PidRecord) -> str | None:
    """None when the recorded process is alive and is the one we started; else why not."""
    try:
        proc = psutil.Process(record.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return f"process {record.pid} is gone"
        if record.create_time is not None and abs(proc.create_time() - record.create_time) > 1.0:
            return f"pid {record.pid} now belongs to another program ({' '.join(proc.cmdline()[:3]) or proc.name()})"
    except psutil.NoSuchProcess:
        return f"process {record.pid} is gone"
    except psutil.AccessDenied:
        return None
    return None


def running_pid(service: Service, run_dir: Path) -> int | None:
    """The live pid of a service, or None. Removes a stale pid file (and says so)."""
    pidfile = service.pidfile(run_dir)
    record = read_pid(pidfile)
    if record is None:
        pidfile.unlink(missing_ok=True)
        return None
    why = _why_stale(record)
    if why is None:
        return record.pid
    print(f"  {service.name}: removed stale pid file {pidfile} ({why})")
    pidfile.unlink(missing_ok=True)
    return None


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, for a service started next (tests, benchmarks, ephemeral stacks).

    Picked at random below the kernel's ephemeral range: a port that ``bind(0)`` finds free lies in that
    range, where every outgoing connection of any process takes its local port, so it could be gone before
    the service binds it. Never the same port twice in one process."""
    import random

    low = _ephemeral_low()
    pick = random.SystemRandom()
    for _ in range(500):
        port = pick.randint(max(1024, low - 12000), low - 1)
        if port in _handed_out or port_in_use(host, port):
            continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # a crowded range: the kernel's choice
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def start(service: Service, run_dir: Path, logs_dir: Path) -> int:
    """Start a service detached in its own process group; returns its pid."""
    if service.port is not None and port_in_use(service.host, service.port):
        raise UserError(
            f"{service.name}: port {service.host}:{service.port} is already in use by another program",
            fix=f"stop that program, or choose another port ({service.port_env})",
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    logs_dir.mkdir(parents=True, exist_ok=True)
    log = service.logfile(logs_dir).open("ab")
    proc = subprocess.Popen(
        service.argv,
        env={**os.environ, **service.env},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=str(run_dir),
    )
    log.close()
    write_pid(service.pidfile(run_dir), proc.pid)
    return proc.pid


def wait_healthy(service: Service, run_dir: Path, logs_dir: Path, timeout: float = 120) -> float:
    """Wait until the service answers its health URL; returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if running_pid(service, run_dir) is None:
            tail = service.logfile(logs_dir).read_text(errors="replace")[-3000:]
            raise ServiceUnavailable(f"{service.name} exited during start-up. Last log lines:\n{tail}",
                                     fix=f"read {service.logfile(logs_dir)}")
        if service.health is None or service.health(2.0):
            return time.monotonic() - started
        time.sleep(0.5)
    target = getattr(service.health, "target", "its health check")
    raise ServiceUnavailable(f"{service.name} was not healthy after {timeout:.0f}s ({target})",
                             fix=f"read {service.logfile(logs_dir)}, then `make down && make up`")


def stop(service: Service, run_dir: Path, timeout: float = 30) -> bool:
    """Stop a service's whole process group: SIGTERM, then SIGKILL after ``timeout``."""
    pid = running_pid(service, run_dir)
    if pid is None:
        return False
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        service.pidfile(run_dir).unlink(missing_ok=True)
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and group_alive(pgid):
            time.sleep(0.2)
        if not group_alive(pgid):
            break
    service.pidfile(run_dir).unlink(missing_ok=True)
    return True


def group_alive(pgid: int) -> bool:
    """True while any non-zombie process of the group is left."""
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return False
