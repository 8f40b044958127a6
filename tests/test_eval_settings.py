"""prp.eval.settings: an instance cache resumes only under the settings that wrote it."""
from __future__ import annotations

import json

import pytest

from prp.eval.settings import check_cache_settings, model_identity, settings_path


def test_a_fresh_cache_records_its_settings_and_a_matching_resume_passes(tmp_path):
    cache = tmp_path / "instances.jsonl"
    check_cache_settings(cache, {"tau": 2.0, "draft": None}, resume=True)  # nothing cached yet
    cache.write_text('{"line": 1}\n')
    check_cache_settings(cache, {"draft": None, "tau": 2.0}, resume=True)  # key order does not matter
    assert json.loads(settings_path(cache).read_text()) == {"draft": None, "tau": 2.0}


def test_a_missing_key_a_corrupt_file_and_an_empty_cache(tmp_path):
    cache = tmp_path / "instances.jsonl"
    cache.write_text('{"line": 1}\n')
    settings_path(cache).write_text('{"tau": 2.0}')
    with pytest.raises(SystemExit, match=r"\(ipr differ\)"):  # a key the old run did not record
        check_cache_settings(cache, {"tau": 2.0, "ipr": "add"}, resume=True)
    settings_path(cache).write_text('{"tau": 2.')  # torn
    with pytest.raises(SystemExit, match="unreadable"):
        check_cache_settings(cache, {"tau": 2.0}, resume=True)
    check_cache_settings(cache, {"tau": 3.0}, resume=False)  # afresh: just recorded
    assert json.loads(settings_path(cache).read_text()) == {"tau": 3.0}
    cache.write_text("")  # an empty cache holds no rows to protect
    check_cache_settings(cache, {"tau": 4.0}, resume=True)


def test_model_identity_follows_the_weight_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "notes.txt").write_text("not part of the model")
    ident = model_identity(str(tmp_path))
    assert ident["path"] == str(tmp_path.resolve()) and set(ident["files"]) == {"config.json", "model.safetensors"}
    (tmp_path / "model.safetensors").write_bytes(b"x" * 11)
    assert model_identity(str(tmp_path)) != ident
    assert model_identity(None) is None and model_identity("https://api.example/v1") == "https://api.example/v1"
