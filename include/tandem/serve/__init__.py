"""Serving: the answer path and the Airflow plugin's app. Both cadences meet here.

One module per concern:

- ``validation``: input checks shared by `tandem ask` and the API (question, k, adapter reference).
- ``adapter_cache``: base + adapter generators, the champion alias re-checked at most every N seconds,
  hot-swapped without a restart.
- ``answer``: the one answer path (retrieve, refusal threshold, prompt, generate, validate).
- ``status``: the state of both cadences as data (index, adapters, evals, anti-flap, links).
- ``page``: the server-rendered status page (``templates/status.html``; inline CSS and SVG, no build step).
- ``api``: the FastAPI app the Airflow plugin mounts at ``/tandem``.
"""
