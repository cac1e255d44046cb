"""The metric names an eval produces, and the group each belongs to.

Every per-output verdict is a metric (the rate of outputs that pass it, over the outputs it applies to).
Groups drive the decision: only *behavior* metrics under threshold can trigger a retrain.
"""

from __future__ import annotations

BEHAVIOR = "behavior"
CONTENT = "content"
RETRIEVAL = "retrieval"
OVERALL = "overall"

# verdict name -> (group, what it checks)
VERDICTS: dict[str, tuple[str, str]] = {
    "json_valid": (BEHAVIOR, "the output is one JSON object (an optional ```json fence is allowed)"),
    "schema_valid": (BEHAVIOR, "the JSON object satisfies the spec's output contract schema"),
    "citations_valid": (BEHAVIOR, "every cited doc id was shown in the context"),
    "grounded": (BEHAVIOR, "answerable, context holds the answer: the answer cites at least one gold doc"),
    "style_max_words": (BEHAVIOR, "the answer has at most style.max_words words"),
    "style_forbidden_phrases": (BEHAVIOR, "the answer contains none of style.forbidden_phrases"),
    "refusal_correct": (BEHAVIOR, "unanswerable: the answer is the refusal text, with no citations"),
    "no_false_refusal": (BEHAVIOR, "answerable, context holds the answer: the answer is not a refusal"),
    "not_stale": (BEHAVIOR, "the example lists old_facts and the context holds the new ones: the answer repeats no "
                            "old fact (a stale answer means the adapter overrode its context)"),
    "answer_correct": (CONTENT, "answerable: the answer contains every gold fact"),
    "values_grounded": (CONTENT, "an answer that is not a refusal: every number, amount, duration and size in it "
                                 "appears in a document it cites"),
    "retrieval_hit": (RETRIEVAL, "answerable: at least one gold doc was in the context"),
    "facts_in_context": (RETRIEVAL, "answerable: every gold fact appears in the context shown (the right chunk "
                                    "was retrieved, not only the right document)"),
}
PASS_RATE = "pass_rate"  # share of examples whose applicable behavior and content verdicts all hold
# Scored on counterfactual probes (tandem.behavior.faithfulness), not on the examples themselves.
FAITHFUL = "faithful"
PROBE_METRICS: dict[str, tuple[str, str]] = {
    FAITHFUL: (BEHAVIOR, "counterfactual probes: the answer gives the value the context states (one fact of the "
                         "oracle chunk changed) and not the original one"),
}

METRIC_GROUPS: dict[str, str] = {**{name: group for name, (group, _) in VERDICTS.items()}, PASS_RATE: OVERALL,
                                 **{name: group for name, (group, _) in PROBE_METRICS.items()}}
THRESHOLD_METRICS = tuple(METRIC_GROUPS)  # what a spec may set a threshold on

# The traffic eval (tandem.behavior.traffic): served answers have no gold data, so they are scored on the
# verdicts that need none, plus two rates of their own.
REFERENCE_FREE = ("json_valid", "schema_valid", "citations_valid", "style_max_words", "style_forbidden_phrases",
                  "values_grounded")
TRAFFIC_METRICS: dict[str, tuple[str, str]] = {
    "answered": (RETRIEVAL, "served questions answered, not refused for lack of a close enough document"),
    "not_down_rated": (OVERALL, "rated answers the user did not rate down"),
}
METRIC_GROUPS.update({name: group for name, (group, _) in TRAFFIC_METRICS.items()})
TRAFFIC_THRESHOLD_METRICS = REFERENCE_FREE + tuple(TRAFFIC_METRICS)
BEHAVIOR_VERDICTS = tuple(name for name, (group, _) in VERDICTS.items() if group == BEHAVIOR)

# Content metrics a candidate adapter may not lose against the base model (the gate's base check), thresholds
# or not: the adapter learns behavior, and must not make answers less correct than the base model's.
BASE_GUARDED = ("answer_correct", "no_false_refusal", FAITHFUL)

# failure classes (diagnosis)
KNOWLEDGE, BEHAVIOR_CLASS, CAPABILITY, PASS = "knowledge", "behavior", "model_capability", "pass"
STALE = "stale"  # a behavior failure of its own: the answer recited an old fact over the context's new one
FAILURE_CLASSES = (KNOWLEDGE, BEHAVIOR_CLASS, STALE, CAPABILITY)


def class_metric(name: str) -> str:
    """MLflow metric name of a diagnosis class rate: ``class_knowledge`` ..."""
    return f"class_{name}"
