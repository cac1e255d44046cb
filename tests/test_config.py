"""Settings.load: environment variables and keyword overrides are read by the same parsers."""

from pathlib import Path

import pytest

from tandem.config import Settings
from tandem.errors import ConfigError


def test_a_string_override_is_parsed_like_its_environment_variable(tmp_path):
    by_keyword = Settings.load({}, home=str(tmp_path), serve_batch_max="4")
    by_env = Settings.load({"TANDEM_HOME": str(tmp_path), "TANDEM_SERVE_BATCH_MAX": "4"})
    assert by_keyword.home == by_env.home == tmp_path
    assert isinstance(by_keyword.home, Path)
    assert by_keyword.home / "models" == tmp_path / "models"  # derived defaults work on a str home
    assert by_keyword.serve_batch_max == by_env.serve_batch_max == 4


def test_a_typed_override_is_kept_as_given(tmp_path):
    assert Settings.load({}, home=tmp_path, serve_batch_max=3).serve_batch_max == 3


def test_a_bad_string_override_names_the_keyword_and_the_fix(tmp_path):
    with pytest.raises(ConfigError) as err:
        Settings.load({}, home=str(tmp_path), serve_batch_max="many")
    assert "serve_batch_max='many' is invalid" in str(err.value)
    assert err.value.fix.startswith("set serve_batch_max to a valid value")


def test_a_bad_environment_variable_still_names_the_variable(tmp_path):
    with pytest.raises(ConfigError) as err:
        Settings.load({"TANDEM_HOME": str(tmp_path), "TANDEM_SERVE_BATCH_MAX": "0"})
    assert "TANDEM_SERVE_BATCH_MAX='0' is invalid" in str(err.value)
