"""Fault hooks for the subprocesses a test starts (the CLI, Airflow tasks): not part of the package.

A test puts this folder first on PYTHONPATH (``knowledge_fixtures.fault_env``) and says what to inject in
``FAULTINJECT``, a JSON object:
- ``{"crash_at": "before_canary"}``: the process exits abruptly (code 70) at that fault point;
- ``{"crash_after_docs": 2}``: it exits after that many committed documents;
- ``{"fail_write": ["acme/x.md"]}``: those documents' writes fail inside their transaction.
"""

import json
import os
import sys

_SPEC = json.loads(os.environ.get("FAULTINJECT") or "{}")

if _SPEC:
    import tandem.faults as _faults

    _committed = [0]

    def _hook(name, **context):
        if name == _SPEC.get("crash_at"):
            sys.stderr.write(f"faultinject: exiting abruptly at {name}\n")
            sys.stderr.flush()
            os._exit(70)
        if name == "doc_committed" and _SPEC.get("crash_after_docs"):
            _committed[0] += 1
            if _committed[0] >= int(_SPEC["crash_after_docs"]):
                os._exit(70)  # an abrupt crash: no cleanup, no lease release, no finally blocks
        if name == "doc_write" and context.get("doc_id") in set(_SPEC.get("fail_write") or ()):
            raise _faults.InjectedFault(f"injected write failure for {context['doc_id']}")

    _faults.hook = _hook
