"""Background services as process groups: start detached, record the pid, stop the whole group.

Each service runs in its own session (``setsid``), so stopping it signals the process group and
leaves no orphans (Airflow's api-server, for example, forks workers). A pid file whose process is
gone is stale: it is reported and removed, never trusted.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tandem.errors import ServiceUnavailable, UserError


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    health_url: str | None = None  # HTTP 200 means healthy; None: healthy while the process lives
    port: int | None = None  # checked free before starting
    host: str = "127.0.0.1"

    def pidfile(self, run_dir: Path) -> Path:
        return run_dir / f"{self.name}.pid"

    def logfile(self, logs_dir: Path) -> Path:
        return logs_dir / f"{self.name}.log"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def running_pid(service: Service, run_dir: Path) -> int | None:
    """The live pid of a service, or None. Removes a stale pid file (and says so)."""
    pidfile = service.pidfile(run_dir)
    pid = read_pid(pidfile)
    if pid is None:
        if pidfile.exists():
            pidfile.unlink()
        return None
    if _alive(pid):
        return pid
    print(f"  {service.name}: removed stale pid file {pidfile} (process {pid} is gone)")
    pidfile.unlink()
    return None


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start(service: Service, run_dir: Path, logs_dir: Path) -> int:
    """Start a service detached in its own process group; returns its pid."""
    if service.port is not None and port_in_use(service.host, service.port):
        raise UserError(
            f"{service.name}: port {service.host}:{service.port} is already in use by another program",
            fix=f"stop that program, or choose another port (TANDEM_{service.name.split('-')[0].upper()}_PORT)",
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
    service.pidfile(run_dir).write_text(f"{proc.pid}\n")
    return proc.pid


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def wait_healthy(service: Service, run_dir: Path, logs_dir: Path, timeout: float = 120) -> float:
    """Wait until the service answers its health URL; returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if running_pid(service, run_dir) is None:
            tail = service.logfile(logs_dir).read_text(errors="replace")[-3000:]
            raise ServiceUnavailable(f"{service.name} exited during start-up. Last log lines:\n{tail}",
                                     fix=f"read {service.logfile(logs_dir)}")
        if service.health_url is None or http_ok(service.health_url):
            return time.monotonic() - started
        time.sleep(0.5)
    raise ServiceUnavailable(f"{service.name} was not healthy after {timeout:.0f}s ({service.health_url})",
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
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields after the command: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
