"""`tandem ask QUESTION [-k N] [--adapter V|base] [--json]`: one answer from the live index and model.

Prints the answer, then numbered citations with title and URI. ``--json`` prints the contract object
(answer, citations, confidence) plus sources, timings (retrieval_ms, generation_ms, ...) and provenance.
Exit codes: 0 answered; 2 bad input (empty/overlong question, k out of range, unknown adapter);
1 no index or champion yet, or a service is down (the message says what to run).
"""

from __future__ import annotations

import sys

from tandem.cli import emit

STAGES = ("resolve adapter", "retrieve", "load model", "generate", "validate")


def register(sub) -> None:
    p = sub.add_parser("ask", help="answer a question with citations (live index + champion adapter)",
                       description=__doc__.splitlines()[0])
    p.add_argument("question", metavar="QUESTION", help="the question, in quotes")
    p.add_argument("-k", type=int, default=None, metavar="N",
                   help="chunks to retrieve (default: the behavior spec's retrieval.k, as in the evals; max TANDEM_ASK_MAX_K)")
    p.add_argument("--adapter", default="champion", metavar="V|base",
                   help="adapter version, an alias (champion, challenger, previous) or 'base' (default: champion)")
    p.add_argument("--json", action="store_true", help="the contract object plus timings, as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from tqdm import tqdm

    from tandem.config import load
    from tandem.serve import tracing

    settings = load()
    tracing.tracer_for(settings).experiment_id()  # looked up while the answer is made: MLflow down never holds it
    with tqdm(total=len(STAGES), desc="ask", unit="step", file=sys.stderr, leave=False,
              disable=None, bar_format="{desc}: {n}/{total} {postfix}") as bar:
        done: list[str] = []

        def progress(stage: str) -> None:
            if done:
                bar.update(1)
            done.append(stage)
            bar.set_postfix_str(stage)

        result, _trace_id = tracing.answer(settings, args.question, source="cli", k=args.k, adapter=args.adapter,
                                           progress=progress)
        bar.update(bar.total - bar.n)
    emit(result.to_dict(), args.json, result.text())
    tracing.tracer_for(settings).flush(timeout=10)  # the answer is out; give its trace a moment to reach MLflow
    return 0
