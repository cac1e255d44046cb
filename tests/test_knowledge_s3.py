"""s3:// sources for real: moto's S3 server on 127.0.0.1 as the S3 API, Airflow connections for the credentials.

Nothing is mocked inside Tandem: the reindex lists and reads the bucket through Airflow's ``ObjectStoragePath``
(the Amazon provider's s3fs filesystem), over HTTP, exactly as on AWS. Two moto server processes (`moto_server`,
each with its own store) stand for two accounts: each source root names its own connection, and each connection points at its own endpoint, so a
root read with the other root's connection (credentials, endpoint) would find nothing.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from knowledge_fixtures import CORPUS, assert_consistent, corpus, index_state, kn  # noqa: F401

from tandem.knowledge import extract, reindex, sources

BUCKET = "acme-docs"
_fixture_no = itertools.count()


class S3Account:
    """One moto S3 server process (its own in-memory store) and the Airflow connection that reaches it."""

    def __init__(self, conn_id: str, key: str):
        import boto3

        from tandem.stack import process

        port = process.free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                                      "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not process.port_in_use("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.conn_id = conn_id
        self.connection = json.dumps({"conn_type": "aws", "login": key, "password": f"{key}-secret",
                                      "extra": {"endpoint_url": self.endpoint, "region_name": "us-east-1"}})
        self.client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=key,
                                   aws_secret_access_key=f"{key}-secret", region_name="us-east-1")
        self.client.create_bucket(Bucket=BUCKET)

    def put(self, key: str, body: str | bytes) -> None:
        self.client.put_object(Bucket=BUCKET, Key=key, Body=body.encode() if isinstance(body, str) else body)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=BUCKET, Key=key)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def accounts(monkeypatch):
    # fresh connection ids per test: Airflow caches a filesystem per connection id for the life of the process
    n = next(_fixture_no)
    made = [S3Account(f"s3_docs_{n}", "docskey"), S3Account(f"s3_wiki_{n}", "wikikey")]
    for account in made:
        monkeypatch.setenv(f"AIRFLOW_CONN_{account.conn_id.upper()}", account.connection)
    yield made
    for account in made:
        account.stop()


def _hashes(files: dict[str, str], source: str) -> dict[str, str]:
    return {f"{source}/{rel}": extract.extract(rel, body.encode()).content_hash for rel, body in files.items()}


def test_index_change_and_delete_through_object_storage(kn, accounts):
    docs, wiki = accounts
    files = {rel: body for rel, body in CORPUS.items() if isinstance(body, str)}
    for rel, body in files.items():
        docs.put(f"kb/{rel}", body)
    wiki_files = {"howto/escalation.md": "# Escalation\n\nPage the on-call engineer after 15 minutes.\n"}
    for rel, body in wiki_files.items():
        wiki.put(f"export/{rel}", body)  # the same bucket name, another account: only s3_wiki reaches it
    settings = kn.replace(sources=(f"docs=s3://{docs.conn_id}@{BUCKET}/kb", f"wiki=s3://{wiki.conn_id}@{BUCKET}/export"))

    first = reindex.run(settings, progress=False)
    assert (first["new"], first["failed"]) == (len(files) + 1, 0), first.get("errors")
    state = index_state(settings)
    assert_consistent(state)
    assert {d: r["hash"] for d, r in state["manifest"].items()} == {**_hashes(files, "docs"),
                                                                    **_hashes(wiki_files, "wiki")}

    changed = files["pricing/plans.md"].replace("29 dollars", "35 dollars")
    docs.put("kb/pricing/plans.md", changed)
    docs.delete("kb/security/sso.md")
    second = reindex.run(settings, progress=False)
    assert (second["new"], second["changed"], second["deleted"], second["failed"]) == (0, 1, 1, 0)
    assert second["unchanged"] == len(files) - 2 + 1
    files["pricing/plans.md"] = changed
    del files["security/sso.md"]
    state = index_state(settings)
    assert_consistent(state)
    assert {d: r["hash"] for d, r in state["manifest"].items()} == {**_hashes(files, "docs"),
                                                                    **_hashes(wiki_files, "wiki")}


def test_two_roots_never_share_a_filesystem_or_its_credentials(accounts):
    docs, wiki = accounts
    docs.put("kb/a.md", "# A\n\nfrom the docs account\n")
    wiki.put("kb/a.md", "# A\n\nfrom the wiki account\n")  # same bucket, same key, another account
    reader = sources.Reader()
    from_docs = reader.read(f"s3://{docs.conn_id}@{BUCKET}/kb/a.md", 10_000)
    from_wiki = reader.read(f"s3://{wiki.conn_id}@{BUCKET}/kb/a.md", 10_000)
    assert b"docs account" in from_docs and b"wiki account" in from_wiki
    assert len(reader._fs) == 2


def test_an_unreachable_root_is_a_clear_error_naming_the_source(kn, accounts, monkeypatch):
    from tandem.errors import UserError

    monkeypatch.setenv("AIRFLOW_CONN_S3_GONE", json.dumps({"conn_type": "aws", "login": "k", "password": "s",
                                                           "extra": {"endpoint_url": "http://127.0.0.1:9",
                                                                     "region_name": "us-east-1"}}))
    settings = kn.replace(sources=(f"gone=s3://s3_gone@{BUCKET}/kb",))
    with pytest.raises(UserError, match="source 'gone'"):
        reindex.run(settings, progress=False)
