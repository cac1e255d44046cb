"""The MLflow registry of adapters, in three rooms: ``versions`` (reading, local copies, registering),
``history`` (the champion history tag) and ``aliases`` (moving champion / challenger / previous under one lock);
``refs`` turns a reference into a local adapter.

The knowledge and behavior cadences, training and serving all read it, so it sits below them. Callers use
the names below: ``from tandem import registry``; ``registry.resolve(settings, "champion")``.
"""

from tandem.registry.aliases import LOCK_NAME, alias_lock, promote, reset_aliases, rollback, set_challenger
from tandem.registry.history import HISTORY_TAG, AliasState, base_by_choice, read_state
from tandem.registry.refs import resolve
from tandem.registry.versions import (ALIASES, ARTIFACT_PATH, CHALLENGER, CHAMPION, LIST_FIX, METADATA_FILE,
                                      METRIC_TAG_PREFIX, MODEL, PREVIOUS, STATUS_FAILED, STATUS_OK, STATUS_TAG,
                                      ResolvedAdapter, alias_version, base_ref, by_alias, champion_version,
                                      check_server, client, download_version, ensure_registered_model,
                                      get_version, is_failed, label, list_versions, mark_failed,
                                      register_version, set_version_tags, version_info, version_number,
                                      version_of_run)

__all__ = ["ALIASES", "ARTIFACT_PATH", "CHALLENGER", "CHAMPION", "HISTORY_TAG", "LIST_FIX", "LOCK_NAME",
           "METADATA_FILE", "METRIC_TAG_PREFIX", "MODEL", "PREVIOUS", "STATUS_FAILED", "STATUS_OK", "STATUS_TAG",
           "AliasState", "ResolvedAdapter", "alias_lock", "alias_version", "base_by_choice", "base_ref", "by_alias",
           "champion_version", "check_server", "client", "download_version", "ensure_registered_model",
           "get_version", "is_failed", "label", "list_versions", "mark_failed", "promote", "read_state",
           "register_version", "reset_aliases", "resolve", "rollback", "set_challenger", "set_version_tags",
           "version_info", "version_number", "version_of_run"]
