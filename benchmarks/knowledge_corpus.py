"""Deterministic generators for the knowledge benchmarks: realistic Markdown documents (0.5-5 KB), short
chunk texts for the 100k-chunk query benchmark, and queries. Same seed and index -> same bytes, everywhere."""

from __future__ import annotations

import random
from pathlib import Path

TOPICS = ["billing", "accounts", "security", "deployment", "networking", "storage", "monitoring", "api",
          "integrations", "mobile", "reporting", "permissions", "backups", "performance", "search", "exports",
          "notifications", "onboarding", "compliance", "troubleshooting"]
NOUNS = ["invoice", "subscription", "workspace", "project", "token", "webhook", "dashboard", "cluster", "node",
         "bucket", "snapshot", "alert", "metric", "role", "policy", "user", "team", "report", "schedule", "queue",
         "worker", "endpoint", "certificate", "domain", "database", "replica", "index", "pipeline", "plan", "quota",
         "region", "gateway", "firewall", "secret", "key", "audit log", "session", "device", "channel", "template",
         "filter", "export", "import", "connector", "trigger", "retention period", "threshold", "limit", "release",
         "feature flag", "integration", "license", "seat", "tenant", "mirror", "cache", "proxy", "job", "task"]
VERBS = ["configure", "enable", "disable", "rotate", "create", "delete", "update", "restore", "export", "import",
         "monitor", "schedule", "upgrade", "migrate", "verify", "archive", "share", "revoke", "assign", "limit",
         "replicate", "encrypt", "inspect", "retry", "throttle", "approve", "review", "sync", "deploy", "roll back"]
ADJS = ["primary", "secondary", "shared", "private", "public", "encrypted", "read-only", "temporary", "default",
        "custom", "regional", "global", "automatic", "manual", "daily", "weekly", "monthly", "critical", "optional",
        "legacy", "new", "active", "inactive", "pending", "failed", "healthy", "degraded", "internal", "external"]
TEMPLATES = [
    "To {verb} a {adj} {noun}, open the {noun2} settings and choose {cap_verb}.",
    "Each {noun} belongs to exactly one {noun2}; a {adj} {noun} cannot be moved to another {noun2}.",
    "Administrators can {verb} the {noun} at any time, but {adj} {noun2}s keep their previous state for {n} days.",
    "When the {noun} is {adj}, Acme will {verb} every {noun2} within {n} minutes.",
    "The {adj} {noun} limit is {n} per {noun2}; contact support to raise it.",
    "If you {verb} a {noun}, the related {noun2} is {adj} until the next sync.",
    "Use the API endpoint /v{m}/{slug} to {verb} a {noun} programmatically.",
    "Billing for the {noun} starts when it becomes {adj} and stops when you {verb} it.",
    "A {adj} {noun2} shows a warning on the dashboard after {n} failed attempts to {verb} the {noun}.",
    "We recommend that you {verb} the {noun} before you {verb2} the {noun2}.",
]


def _sentence(rng: random.Random) -> str:
    verb, verb2 = rng.choice(VERBS), rng.choice(VERBS)
    noun, noun2 = rng.choice(NOUNS), rng.choice(NOUNS)
    return rng.choice(TEMPLATES).format(
        verb=verb, verb2=verb2, cap_verb=verb.capitalize(), noun=noun, noun2=noun2, adj=rng.choice(ADJS),
        n=rng.randint(2, 90), m=rng.randint(1, 3), slug=noun.replace(" ", "-") + "s")


def _paragraph(rng: random.Random, sentences: tuple[int, int] = (2, 6)) -> str:
    return " ".join(_sentence(rng) for _ in range(rng.randint(*sentences)))


def document(i: int, seed: int = 7) -> tuple[str, str]:
    """(relative path, Markdown text) of document ``i``: 500..5000 bytes, headings, lists, sometimes code."""
    rng = random.Random(seed * 1_000_003 + i)
    topic = TOPICS[i % len(TOPICS)]
    noun = rng.choice(NOUNS)
    title = f"{rng.choice(VERBS).capitalize()} {rng.choice(ADJS)} {noun}s in {topic}"
    target = rng.randint(500, 5000)
    parts = [f"# {title}", _paragraph(rng, (1, 3))]
    size = sum(len(p) + 2 for p in parts)
    section = 0
    while size < target:
        section += 1
        kind = rng.random()
        if kind < 0.35:
            block = f"## {rng.choice(VERBS).capitalize()} the {rng.choice(NOUNS)}\n\n{_paragraph(rng)}"
        elif kind < 0.55:
            block = f"### {rng.choice(ADJS).capitalize()} {rng.choice(NOUNS)}s\n\n{_paragraph(rng, (1, 4))}"
        elif kind < 0.75:
            block = "\n".join(f"- {_sentence(rng)}" for _ in range(rng.randint(2, 5)))
        elif kind < 0.85:
            block = (f"```bash\nacme {rng.choice(VERBS).replace(' ', '-')} --{rng.choice(NOUNS).replace(' ', '-')} "
                     f"{rng.randint(1, 999)}\n```")
        else:
            block = _paragraph(rng)
        if size + len(block) + 2 > 5000:
            break
        parts.append(block)
        size += len(block) + 2
    text = "\n\n".join(parts) + "\n"
    return f"{topic}/{noun.replace(' ', '-')}-{i:05d}.md", text


def write(folder: Path, n: int, seed: int = 7) -> Path:
    """Write documents 0..n-1 under ``folder`` (skips files that already hold the right bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rel, text = document(i, seed)
        path = folder / rel
        data = text.encode()
        if path.exists() and path.stat().st_size == len(data):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def modify(folder: Path, indices: list[int], revision: int, seed: int = 7) -> None:
    """Change documents in place (a new paragraph), as an edit would."""
    for i in indices:
        rel, text = document(i, seed)
        rng = random.Random(seed * 7919 + i * 31 + revision)
        (folder / rel).write_text(text + f"\n## Revision {revision}\n\n{_paragraph(rng, (1, 2))}\n")


def chunk_text(i: int, seed: int = 7) -> tuple[str, str, str]:
    """(title, heading, text) of a short chunk (~25-40 words) for the query benchmark."""
    rng = random.Random(seed * 2_000_033 + i)
    title = f"{rng.choice(TOPICS).capitalize()}: {rng.choice(NOUNS)}s"
    heading = f"{rng.choice(VERBS).capitalize()} the {rng.choice(NOUNS)}"
    return title, heading, " ".join(_sentence(rng) for _ in range(2))


def query(i: int, seed: int = 7) -> str:
    rng = random.Random(seed * 3_000_017 + i)
    return rng.choice([
        f"how do I {rng.choice(VERBS)} a {rng.choice(ADJS)} {rng.choice(NOUNS)}",
        f"{rng.choice(NOUNS)} limit per {rng.choice(NOUNS)}",
        f"why is my {rng.choice(NOUNS)} {rng.choice(ADJS)}",
        f"{rng.choice(VERBS)} {rng.choice(NOUNS)} api",
        f"billing for {rng.choice(ADJS)} {rng.choice(NOUNS)}s",
    ])
