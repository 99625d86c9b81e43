"""A bad config fails at the start, naming the field; the CLI says so without a traceback."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fineflow.cli import load_config, main
from fineflow.config import PipelineConfig


def test_defaults_point_at_the_bundled_sample():
    cfg = PipelineConfig()
    assert len(cfg.sources.warcs) >= 4
    assert cfg.url_filter.blocklist.is_file()


@pytest.mark.parametrize(
    ("tree", "field"),
    [
        ({"train": {"steps": "many"}}, "train.steps"),
        ({"train": {"model": {"n_embd": 130, "n_head": 4}}}, "train.model"),
        ({"tokenizer": {"vocab_sise": 100}}, "tokenizer.vocab_sise"),
        ({"url_filter": {"blocklist": "/nonexistent/domains"}}, "url_filter"),
        ({"sources": {"warcs": []}}, "sources"),
        ({"force": ["nonsense"]}, "force.0"),
        ({"sources": {"common_crawl": {"crawl": "2024-10"}}}, "sources.common_crawl.crawl"),
    ],
)
def test_invalid_field_is_named(tree, field):
    with pytest.raises(ValidationError) as err:
        PipelineConfig.model_validate(tree)
    locs = {".".join(map(str, e["loc"])) for e in err.value.errors()}
    assert any(loc.startswith(field) for loc in locs), locs


def test_set_overrides_are_typed():
    cfg = load_config(None, ["train.steps=77", "tokenizer.vocab_size=300"], ["shard"], "train")
    assert (cfg.train.steps, cfg.tokenizer.vocab_size) == (77, 300)
    assert cfg.force == ["shard"] and cfg.stop_after == "train"


def test_cli_reports_bad_field_and_exits_2(capsys):
    assert main(["run", "--set", "train.lr=-1"]) == 2
    assert "train.lr" in capsys.readouterr().err


def test_every_prefect_yaml_preset_is_a_valid_config():
    from fineflow.cli import preset

    for name in ("sample", "common-crawl", "gpu-124m"):
        cfg = load_config(None, [], [], None, name)
        assert isinstance(cfg, PipelineConfig)
    assert load_config(None, [], [], None, "gpu-124m").train.model.n_layer == 12
    with pytest.raises(SystemExit, match="no preset"):
        preset("nonexistent")


@pytest.mark.parametrize("name", ["sample", "common-crawl", "gpu-124m"])
def test_a_config_read_back_from_json_caches_as_the_original(name):
    """The Prefect UI, a deployment and --config hand the flow JSON: same stage keys."""
    import json

    from fineflow.storage.fingerprint import fingerprint

    cfg = load_config(None, [], [], None, name)
    for back in (
        PipelineConfig.model_validate(json.loads(cfg.model_dump_json())),
        PipelineConfig.model_validate_json(cfg.model_dump_json()),
    ):
        for stage in PipelineConfig.model_fields:
            ours, theirs = getattr(cfg, stage), getattr(back, stage)
            assert fingerprint(ours) == fingerprint(theirs), stage
    # defaults have their field's type: an int default of a float field would hash apart
    assert isinstance(PipelineConfig().filter.gopher_quality.min_avg_word_length, float)


def test_sources_and_settings_that_cannot_work_fail_at_the_start(tmp_path, capsys):
    """A missing WARC, one WARC listed twice, no languages, an infinite backoff."""
    here = tmp_path / "a.warc.gz"
    here.write_bytes(b"")
    for tree, field, says in [
        ({"sources": {"warcs": [str(tmp_path / "gone.warc.gz")]}}, "sources.warcs", "no such file"),
        (
            {"sources": {"warcs": [str(here), str(here)]}},
            "sources.warcs",
            "is listed twice",
        ),
        ({"filter": {"language": {"languages": []}}}, "filter.language.languages", "at least 1"),
        ({"download": {"backoff_s": "inf"}}, "download.backoff_s", "finite"),
    ]:
        with pytest.raises(ValidationError) as err:
            PipelineConfig.model_validate(tree)
        (e,) = err.value.errors()
        assert ".".join(map(str, e["loc"])) == field and says in e["msg"], (tree, e)
    # on the command line: one line naming the field, exit 2, nothing run
    assert main(["run", "--set", f"sources.warcs=[{tmp_path / 'gone.warc.gz'}]"]) == 2
    assert "sources.warcs: Value error, WARC source" in capsys.readouterr().err


def test_an_unreadable_config_file_is_one_line_and_exit_2(tmp_path, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: [1,\n")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    for argv, says in [
        (["--config", str(tmp_path / "none.yaml")], "No such file"),
        (["--config", str(bad_yaml)], "bad.yaml: while parsing"),
        (["--config", str(listed)], "wants a mapping of fields, got list"),
        (["--set", "train.steps"], "--set wants FIELD=VALUE"),
        (["--preset", "nonexistent"], "no preset 'nonexistent'"),
    ]:
        assert main(["status", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fineflow: ") and says in err and "Traceback" not in err, err
