"""The behavior spec: one versioned YAML file, the single place a team says how answers must look.

It holds the output contract (a JSON schema), the style rules (max words, forbidden phrases, the refusal
text), a threshold per metric and the primary metric, the anti-flap policy, the prompt/generation bounds,
the counterfactual probes of the ``faithful`` metric, and how far a candidate adapter may fall below the base
model on content (``gate.base_tolerance``). ``load_spec`` validates all of it and names the file and the field of the first problem, before any
model is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from tandem.behavior.metrics import PASS_RATE, THRESHOLD_METRICS, TRAFFIC_THRESHOLD_METRICS
from tandem.errors import UserError

DEFAULT_SYSTEM = (
    "You answer questions using only the documents in the context. Reply with one JSON object and nothing "
    'else: {{"answer": "...", "citations": ["<doc id>", ...], "confidence": "high" | "medium" | "low"}}. '
    "Cite the doc ids of the documents you used. Use at most {max_words} words in the answer. "
    'If the context does not contain the answer, reply {{"answer": "{refusal_text}", "citations": [], '
    '"confidence": "low"}}.'
)

_TOP_KEYS = {"version", "description", "output_contract", "style", "thresholds", "primary_metric", "anti_flap",
             "decision", "prompt", "retrieval", "generation", "faithfulness", "gate", "traffic"}
TRAFFIC_SOURCES = ("eval_set", "traffic", "both")


@dataclasses.dataclass(frozen=True)
class Style:
    max_words: int
    forbidden_phrases: tuple[str, ...]
    refusal_text: str


@dataclasses.dataclass(frozen=True)
class AntiFlap:
    consecutive_failures: int = 2  # failing evals in a row (this one included) before a retrain
    min_hours_between_retrains: float = 24.0
    max_retrains_per_week: int = 2


@dataclasses.dataclass(frozen=True)
class Traffic:
    """How ``behavior_eval`` scores served answers (``tandem.behavior.traffic``)."""

    source: str = "eval_set"  # what behavior_eval scores when its run does not say: eval_set, traffic, both
    window_hours: float = 24.0
    sample: int = 200  # traces scored per window (a seeded sample when more were served)
    seed: int = 0
    min_traces: int = 20  # fewer in the window: "not enough traffic", no decision
    thresholds: tuple[tuple[str, float], ...] = (("answered", 0.5), ("citations_valid", 0.85),
                                                  ("json_valid", 0.9), ("schema_valid", 0.9))


@dataclasses.dataclass(frozen=True)
class Spec:
    version: str
    path: str
    digest: str  # sha256 of the file
    output_schema: dict
    style: Style
    thresholds: dict[str, float]
    primary_metric: str
    anti_flap: AntiFlap
    dominance: float  # share of failures a class needs to dominate
    system_prompt: str  # with {max_words} and {refusal_text} filled in
    max_context_chars: int  # per context chunk shown to the model
    retrieval_k: int
    max_new_tokens: int
    batch_size: int
    probes: int = 20  # counterfactual probes per eval (0: no `faithful` metric)
    probe_seed: int = 0
    base_tolerance: float = 0.05  # how far a candidate may fall below the base model on BASE_GUARDED metrics
    traffic: Traffic = Traffic()

    @property
    def refusal(self) -> str:
        """The refusal text (alias of ``style.refusal_text``)."""
        return self.style.refusal_text


class _Fields:
    """Typed access to a YAML mapping that names the file and the dotted field in every error."""

    def __init__(self, path: Path, data: dict, prefix: str = ""):
        self.path, self.data, self.prefix = path, data, prefix

    def error(self, field: str, problem: str, fix: str) -> UserError:
        return UserError(f"behavior spec {self.path}: field `{self.prefix}{field}`: {problem}", fix=fix)

    def section(self, key: str, required: bool = True) -> "_Fields":
        value = self.data.get(key)
        if value is None and not required:
            return _Fields(self.path, {}, f"{self.prefix}{key}.")
        if not isinstance(value, dict):
            raise self.error(key, "missing" if value is None else f"must be a mapping, got {type(value).__name__}",
                             f"add a `{self.prefix}{key}:` mapping (see include/tandem/data/demo/behavior_spec.yaml)")
        return _Fields(self.path, value, f"{self.prefix}{key}.")

    def get(self, key: str, kind, default: Any = dataclasses.MISSING, *, minimum=None, maximum=None):
        if key not in self.data or self.data[key] is None:
            if default is dataclasses.MISSING:
                raise self.error(key, "missing", f"set `{self.prefix}{key}`")
            return default
        value = self.data[key]
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.error(key, f"must be a {name}, got {value!r}", f"set `{self.prefix}{key}` to a {name}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be >= {minimum}, got {value}", f"raise `{self.prefix}{key}`")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be <= {maximum}, got {value}", f"lower `{self.prefix}{key}`")
        return value

    def unknown(self, allowed: set[str]) -> None:
        extra = sorted(set(self.data) - allowed)
        if extra:
            raise self.error(extra[0], "unknown field", f"remove it or use one of: {', '.join(sorted(allowed))}")


def load_spec(path: str | Path) -> Spec:
    """Read and validate a behavior spec. Raises UserError naming the file and field of the first problem."""
    path = Path(path).expanduser()
    raw, data = _read_yaml(path)
    top = _Fields(path, data)
    top.unknown(_TOP_KEYS)
    version = str(top.get("version", (str, int, float))).strip()
    if not version:
        raise top.error("version", "must not be empty", "set `version`, e.g. \"2026.1\"")
    schema = _output_schema(top.section("output_contract"))
    style = _style(top.section("style"))
    thresholds, primary = _thresholds(top)
    af = top.section("anti_flap", required=False)
    af.unknown({"consecutive_failures", "min_hours_between_retrains", "max_retrains_per_week"})
    anti_flap = AntiFlap(consecutive_failures=af.get("consecutive_failures", int, 2, minimum=1),
                         min_hours_between_retrains=af.get("min_hours_between_retrains", float, 24.0, minimum=0.0),
                         max_retrains_per_week=af.get("max_retrains_per_week", int, 2, minimum=0))
    dec = top.section("decision", required=False)
    dec.unknown({"dominance"})
    pr = top.section("prompt", required=False)
    pr.unknown({"system", "max_context_chars"})
    ret = top.section("retrieval", required=False)
    ret.unknown({"k"})
    gen = top.section("generation", required=False)
    gen.unknown({"max_new_tokens", "batch_size"})
    faith = top.section("faithfulness", required=False)
    faith.unknown({"probes", "seed"})
    gate = top.section("gate", required=False)
    gate.unknown({"base_tolerance"})
    return Spec(
        version=version, path=str(path), digest=hashlib.sha256(raw).hexdigest(), output_schema=schema, style=style,
        thresholds=thresholds, primary_metric=primary, anti_flap=anti_flap,
        dominance=dec.get("dominance", float, 0.5, minimum=0.0, maximum=1.0),
        system_prompt=_system_prompt(pr, style), max_context_chars=pr.get("max_context_chars", int, 700, minimum=50),
        retrieval_k=ret.get("k", int, 3, minimum=1, maximum=50),
        max_new_tokens=gen.get("max_new_tokens", int, 96, minimum=8, maximum=2048),
        batch_size=gen.get("batch_size", int, 8, minimum=1, maximum=256),
        probes=faith.get("probes", int, 20, minimum=0, maximum=1000),
        probe_seed=faith.get("seed", int, 0, minimum=0, maximum=2**31 - 1),
        base_tolerance=gate.get("base_tolerance", float, 0.05, minimum=0.0, maximum=1.0),
        traffic=_traffic(top.section("traffic", required=False)),
    )


def _read_yaml(path: Path) -> tuple[bytes, dict]:
    import yaml

    if not path.is_file():
        raise UserError(f"behavior spec {path} does not exist",
                        fix="set TANDEM_SPEC_PATH to a behavior spec YAML (the demo's is "
                            "include/tandem/data/demo/behavior_spec.yaml)")
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise UserError(f"behavior spec {path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}",
                        fix="fix the YAML syntax (indentation, quotes, colons)") from None
    if not isinstance(data, dict):
        raise UserError(f"behavior spec {path}: the top level must be a mapping", fix="see the demo spec")
    return raw, data


def _output_schema(contract: "_Fields") -> dict:
    import jsonschema

    contract.unknown({"schema"})
    schema = contract.get("schema", dict)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise contract.error("schema", f"not a valid JSON schema: {exc.message}", "fix the schema") from None
    props = schema.get("properties") or {}
    for field, kind in (("answer", "string"), ("citations", "array")):
        if (props.get(field) or {}).get("type") != kind:
            raise contract.error(f"schema.properties.{field}", f"the contract needs `{field}` of type {kind}",
                                 f"declare `{field}: {{type: {kind}}}` under properties")
    return schema


def _style(style_f: "_Fields") -> Style:
    style_f.unknown({"max_words", "forbidden_phrases", "refusal_text"})
    phrases = style_f.get("forbidden_phrases", list, [])
    for i, phrase in enumerate(phrases):
        if not isinstance(phrase, str) or not phrase.strip():
            raise style_f.error(f"forbidden_phrases[{i}]", f"must be a non-empty string, got {phrase!r}",
                                "list phrases as strings")
    refusal = style_f.get("refusal_text", str).strip()
    if not refusal:
        raise style_f.error("refusal_text", "must not be empty", "set the exact refusal sentence")
    return Style(max_words=style_f.get("max_words", int, minimum=1),
                 forbidden_phrases=tuple(p.strip() for p in phrases), refusal_text=refusal)


def _thresholds(top: "_Fields") -> tuple[dict[str, float], str]:
    th_f = top.section("thresholds")
    thresholds: dict[str, float] = {}
    for name in sorted(th_f.data):
        if name not in THRESHOLD_METRICS:
            raise th_f.error(str(name), f"unknown metric {name!r}",
                             f"use one of: {', '.join(THRESHOLD_METRICS)}")
        thresholds[name] = th_f.get(name, float, minimum=0.0, maximum=1.0)
    if not thresholds:
        raise th_f.error("", "needs at least one metric", f"set thresholds for some of: {', '.join(THRESHOLD_METRICS)}")
    primary = top.get("primary_metric", str, PASS_RATE)
    if primary not in THRESHOLD_METRICS:
        raise top.error("primary_metric", f"unknown metric {primary!r}", f"use one of: {', '.join(THRESHOLD_METRICS)}")
    return thresholds, primary


def _traffic(tr: "_Fields") -> Traffic:
    tr.unknown({"source", "window_hours", "sample", "seed", "min_traces", "thresholds"})
    source = tr.get("source", str, Traffic.source)
    if source not in TRAFFIC_SOURCES:
        raise tr.error("source", f"must be one of {', '.join(TRAFFIC_SOURCES)}, got {source!r}",
                       "set `traffic.source` to eval_set, traffic or both")
    th_f = tr.section("thresholds", required=False)
    thresholds = dict(Traffic.thresholds) if not th_f.data else {}
    for name in sorted(th_f.data):
        if name not in TRAFFIC_THRESHOLD_METRICS:
            raise th_f.error(str(name), f"unknown traffic metric {name!r}",
                             f"use one of: {', '.join(TRAFFIC_THRESHOLD_METRICS)}")
        thresholds[name] = th_f.get(name, float, minimum=0.0, maximum=1.0)
    return Traffic(source=source, window_hours=tr.get("window_hours", float, 24.0, minimum=0.1, maximum=24 * 90),
                   sample=tr.get("sample", int, 200, minimum=1, maximum=100_000),
                   seed=tr.get("seed", int, 0, minimum=0, maximum=2**31 - 1),
                   min_traces=tr.get("min_traces", int, 20, minimum=1), thresholds=tuple(sorted(thresholds.items())))


def _system_prompt(pr: "_Fields", style: Style) -> str:
    template = pr.get("system", str, DEFAULT_SYSTEM)
    try:
        return template.format(max_words=style.max_words, refusal_text=style.refusal_text)
    except (KeyError, IndexError, ValueError) as exc:
        raise pr.error("system", f"bad placeholder {exc}",
                       "only {max_words} and {refusal_text} are filled in; double other braces: {{ }}") from None
