"""The retrain parameters: one table of names, JSON-schema types, bounds, defaults and descriptions.

The ``lora_retrain`` DAG builds its trigger form from it (``airflow_params``, so Airflow refuses invalid
conf at trigger time), and ``tandem adapters retrain`` validates ``--set name=value`` against the same
schema (``validate``). Pure Python: DAG files import this at parse time.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from tandem.errors import UserError

_MODULE = {"type": "string", "pattern": r"^[A-Za-z0-9_.\-]+$", "maxLength": 100}

# name -> (default, JSON schema (without default), description). Order = form order.
SCHEMA: dict[str, tuple[Any, dict, str]] = {
    "base_model": ("", {"type": "string", "maxLength": 500},
                   "Base LLM: a local Hugging Face folder or hub id. Empty: TANDEM_BASE_MODEL."),
    "dataset": ("", {"type": "string", "maxLength": 1000},
                "Curated behavior examples (JSONL path). Empty: TANDEM_TRAIN_SET_PATH."),
    "lora_r": (8, {"type": "integer", "minimum": 1, "maximum": 256}, "LoRA rank."),
    "lora_alpha": (16, {"type": "integer", "minimum": 1, "maximum": 1024}, "LoRA alpha (scale = alpha / r)."),
    "lora_dropout": (0.05, {"type": "number", "minimum": 0, "maximum": 0.5}, "Dropout on the LoRA path."),
    "target_modules": (["q_proj", "k_proj", "v_proj", "o_proj"],
                       {"type": "array", "items": _MODULE, "minItems": 1, "maxItems": 16, "uniqueItems": True},
                       "Module names LoRA adapts (attention projections by default)."),
    "learning_rate": (1e-3, {"type": "number", "exclusiveMinimum": 0, "maximum": 0.01}, "Peak learning rate (AdamW)."),
    "max_steps": (80, {"type": "integer", "minimum": 0, "maximum": 100000},
                  "Optimizer steps. 0: train for `epochs` instead. Default: TANDEM_RETRAIN_MAX_STEPS (80)."),
    "epochs": (1.0, {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
               "Passes over the training split, used when max_steps is 0."),
    "batch_size": (2, {"type": "integer", "minimum": 1, "maximum": 64}, "Examples per optimizer step."),
    "max_seq_len": (768, {"type": "integer", "minimum": 64, "maximum": 8192},
                    "Token budget of one example; longer contexts are shortened, the target never."),
    "seed": (42, {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
             "Seed of the split-independent choices: context shuffling, refusal rows, init and batch order."),
    "gradient_checkpointing": (False, {"type": "boolean"}, "Trade compute for memory on long sequences."),
    "distractors": (1, {"type": "integer", "minimum": 0, "maximum": 10},
                    "RAFT: distractor chunks added to each example's context (1: shorter rows, cheaper steps)."),
    "distractor_chars": (300, {"type": "integer", "minimum": 0, "maximum": 10000},
                         "RAFT: characters of each distractor chunk a training row shows (its window best matching the "
                         "question); 0 shows as much as the eval does. Shorter rows make cheaper steps."),
    "no_oracle_fraction": (0.0, {"type": "number", "minimum": 0, "maximum": 0.9},
                           "RAFT: fraction of answerable examples whose oracle chunks are withheld; their target "
                           "is the spec's refusal. Measured on the demo (40 steps): 0.2 refuses 78% of answerable "
                           "held-out questions, 0.1 42%, 0.0 (30 steps) 35%. The unanswerable examples still teach "
                           "the refusal, and the answer path refuses by similarity before the model is asked."),
    "unanswerable_fraction": (0.0, {"type": "number", "minimum": 0, "maximum": 1},
                              "RAFT: share of the training split's unanswerable examples trained with the refusal "
                              "target (held-out ones always stay). Measured on the demo (40 steps, all of them, 18% "
                              "of the rows): the adapter refused 30% of the answerable held-out questions and none "
                              "of the 5 unanswerable ones; the answer path refuses by similarity first."),
    "counterfactual_fraction": (1.0, {"type": "number", "minimum": 0, "maximum": 1},
                                "RAFT: fraction of training rows whose answer states a value from its oracle chunk "
                                "that get the value changed in both context and target, so the adapter learns to "
                                "copy facts from its context instead of reciting them (demo: 1.0 alters 38% of the "
                                "training rows; 0.5, 19%)."),
    "reviewed_answers": (False, {"type": "boolean"},
                         "Add the answers reviewers corrected (answer traces with a `corrected_answer`, kept in the "
                         "MLflow evaluation dataset tandem-reviewed-answers) to the training split; never held out."),
    "holdout_fraction": (0.15, {"type": "number", "minimum": 0.05, "maximum": 0.5},
                         "Fraction of examples held out for the three-way evaluation (split by a hash of the id)."),
    "promotion_margin": (0.02, {"type": "number", "minimum": 0, "maximum": 1},
                         "The candidate must beat the champion's primary metric by at least this much."),
    "regression_tolerance": (0.02, {"type": "number", "minimum": 0, "maximum": 1},
                             "No metric the spec gates (its thresholds) may drop more than this below the champion's; "
                             "others are reported with the gate's reason."),
    "auto_promote": (True, {"type": "boolean"},
                     "Promote a candidate that passes the gate. Off: it stays challenger for a manual promote."),
    "require_approval": (False, {"type": "boolean"},
                         "A candidate that passes the gate waits for a human to approve it in the Airflow UI."),
    "reason": ("manual", {"type": "string", "minLength": 1, "maxLength": 500},
               "Why this retrain runs (recorded as a tag on the run and the version)."),
    "failing_metrics": ([], {"type": "array", "items": {"type": "string", "maxLength": 100}, "maxItems": 50},
                        "Metrics under threshold in the triggering behavior_eval run (recorded as a tag)."),
    "eval_run_id": ("", {"type": "string", "maxLength": 64, "pattern": r"^[0-9a-zA-Z_\-]*$"},
                    "MLflow run id of the behavior_eval run that triggered this retrain (empty: manual)."),
}


@dataclasses.dataclass(frozen=True)
class RetrainParams:
    base_model: str
    dataset: str
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    target_modules: tuple[str, ...]
    learning_rate: float
    max_steps: int
    epochs: float
    batch_size: int
    max_seq_len: int
    seed: int
    gradient_checkpointing: bool
    distractors: int
    distractor_chars: int
    no_oracle_fraction: float
    unanswerable_fraction: float
    counterfactual_fraction: float
    reviewed_answers: bool
    holdout_fraction: float
    promotion_margin: float
    regression_tolerance: float
    auto_promote: bool
    require_approval: bool
    reason: str
    failing_metrics: tuple[str, ...]
    eval_run_id: str

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["target_modules"] = list(self.target_modules)
        out["failing_metrics"] = list(self.failing_metrics)
        return out


def _default(name: str) -> Any:
    """A parameter's default: the table's, or the deployment's where a setting names one (environment only)."""
    if name == "max_steps":
        from tandem.config import Settings

        return Settings.load().retrain_max_steps
    default = SCHEMA[name][0]
    return list(default) if isinstance(default, list) else default


def defaults() -> dict[str, Any]:
    return {name: _default(name) for name in SCHEMA}


def json_schema() -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {name: {**schema, "default": _default(name), "description": desc}
                       for name, (_, schema, desc) in SCHEMA.items()},
    }


def airflow_params() -> dict:
    """``{name: Param(...)}`` for a DAG's ``params`` (Airflow validates trigger conf against them)."""
    from airflow.sdk import Param

    return {name: Param(_default(name), description=desc, **schema) for name, (_, schema, desc) in SCHEMA.items()}


def validate(values: dict[str, Any] | None) -> RetrainParams:
    """Defaults + ``values``, checked against the schema. Raises UserError naming the bad field and the fix."""
    import jsonschema

    merged = defaults()
    unknown = sorted(set(values or {}) - set(SCHEMA))
    if unknown:
        raise UserError(f"unknown retrain parameter(s): {', '.join(unknown)}",
                        fix=f"use one of: {', '.join(SCHEMA)}")
    merged.update(values or {})
    if isinstance(merged.get("target_modules"), str):
        merged["target_modules"] = [m.strip() for m in merged["target_modules"].split(",") if m.strip()]
    validator = jsonschema.Draft7Validator(json_schema())
    errors = sorted(validator.iter_errors(merged), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        field = ".".join(str(p) for p in err.path) or "(params)"
        name = str(err.path[0]) if err.path else ""
        _, schema, desc = SCHEMA.get(name, (None, {}, ""))
        default = _default(name) if name in SCHEMA else None
        bounds = {k: v for k, v in schema.items() if k in ("type", "minimum", "maximum", "exclusiveMinimum",
                                                            "minLength", "maxLength", "minItems", "maxItems")}
        raise UserError(f"invalid retrain parameter {field}={json.dumps(err.instance)}: {err.message}",
                        fix=f"{desc} Allowed: {json.dumps(bounds)}; default {json.dumps(default)}")
    if merged["max_steps"] == 0 and not merged["epochs"]:
        raise UserError("max_steps is 0 and epochs is not set", fix="set max_steps >= 1 or epochs > 0")
    merged["target_modules"] = tuple(merged["target_modules"])
    merged["failing_metrics"] = tuple(merged["failing_metrics"])
    return RetrainParams(**merged)


def parse_assignment(text: str) -> tuple[str, Any]:
    """``name=value`` from the command line; the value is JSON when it parses, else a string."""
    if "=" not in text:
        raise UserError(f"expected NAME=VALUE, got {text!r}", fix=f"for example --set max_steps=20; names: {', '.join(SCHEMA)}")
    name, raw = text.split("=", 1)
    name = name.strip()
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    if name in ("target_modules", "failing_metrics") and isinstance(value, str):
        value = [m.strip() for m in value.split(",") if m.strip()]
    if name in ("base_model", "dataset", "reason", "eval_run_id") and not isinstance(value, str):
        value = raw
    return name, value
