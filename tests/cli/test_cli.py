"""`fineflow status` reads the cache exactly as a run would use it, and runs nothing;
`fineflow sample` / `export` use the model a configuration trained, found the same way."""

from __future__ import annotations

import json
import os

import pytest

from fineflow.cli import main
from fineflow.config import STAGES
from fineflow.status import pipeline_status
from tests.helpers.e2e import small_config


def summary(cfg) -> dict[str, str]:
    return {s.stage: s.summary for s in pipeline_status(cfg)}


@pytest.fixture(scope="module")
def ran(prefect_server, warcs, tmp_path_factory):
    from fineflow.flows.pipeline import pipeline

    root = tmp_path_factory.mktemp("data")
    cfg = small_config(root, warcs[:2])
    before = summary(cfg)
    result = pipeline(cfg)
    return cfg, before, result


@pytest.fixture(scope="module")
def warcs(tmp_path_factory):
    from tests.helpers.e2e import SAMPLE_WARCS, head_warc

    d = tmp_path_factory.mktemp("warcs")
    return [str(head_warc(p, d / p.name, 30)) for p in SAMPLE_WARCS[:2]]


def test_before_any_run_only_the_first_stage_is_known(ran):
    _, before, _ = ran
    assert before["download"] == "will run"
    assert all(before[s] == "unknown" for s in STAGES[1:])


def test_after_a_run_every_stage_reads_cached_and_nothing_runs(ran):
    cfg, _, result = ran
    assert summary(cfg) == {s: "cached" for s in STAGES}
    assert {ln.stage for ln in result.lines} == set(STAGES)  # the wiring matches the flow


def test_a_changed_parameter_or_file_or_force_shows_as_such(ran):
    cfg, _, result = ran
    s = summary(cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 13})}))
    assert s["shard"] == "cached" and s["train"] == "will run" and s["evaluate"] == "unknown"
    assert summary(cfg.model_copy(update={"force": ["tokenizer"]}))["tokenizer"] == "forced"

    shard = result.outputs["shard"]
    victim = shard.paths(cfg.data_root, ".bin")[0]
    body = victim.read_bytes()
    victim.write_bytes(body[:-4] + b"\0\0\0\1")  # same size, other content
    try:
        s = summary(cfg)
        assert s["shard"] == "stale" and s["tokenizer"] == "cached" and s["train"] == "unknown"
    finally:
        victim.write_bytes(body)  # the module's run stays intact for the tests below
    assert summary(cfg)["shard"] == "cached"


def test_cli_status_prints_a_line_per_stage(ran, tmp_path, capsys):
    cfg, _, _ = ran
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    assert main(["status", "--config", str(path), "--stop-after", "dedup"]) == 0
    out = capsys.readouterr().out
    assert "nothing was run" in out
    assert [ln.split()[0] for ln in out.splitlines()[2:8]] == list(STAGES[:6])


def _config_file(cfg, tmp_path, **update):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.model_copy(update=update).model_dump(mode="json")))
    return str(path)


def test_cli_sample_uses_the_model_the_config_trained(ran, tmp_path, capsys):
    cfg, _, result = ran
    path = _config_file(cfg, tmp_path)
    # the config's own prompts and seed: exactly the evaluate stage's samples
    assert main(["sample", "--config", path]) == 0
    out = capsys.readouterr().out
    model_dir = result.outputs["train"].path(cfg.data_root, "model.pt").parent
    assert out.startswith(f"model {model_dir} (1 layers x 32 wide, context 32, vocab ")
    report = json.loads(result.outputs["evaluate"].path(cfg.data_root, "eval.json").read_text())
    for s in report["samples"]:
        assert f">>> {s['prompt']}\n{s['text']}\n" in out + "\n"

    # own prompts and settings; the same model by its directory gives the same text
    args = ["Hello world", "--set", "evaluate.max_new_tokens=20", "--set", "evaluate.seed=7"]
    assert main(["sample", "--config", path, *args]) == 0
    by_config = capsys.readouterr().out
    assert ">>> Hello world\nHello world" in by_config and "20 new tokens" in by_config
    assert main(["sample", "--config", path, "--model", str(model_dir), *args]) == 0
    assert capsys.readouterr().out == by_config


def test_cli_export_writes_the_configs_model(ran, tmp_path, capsys):
    cfg, _, _ = ran
    out_dir = tmp_path / "hf"
    assert main(["export", str(out_dir), "--config", _config_file(cfg, tmp_path)]) == 0
    assert f"wrote {out_dir}" in capsys.readouterr().out
    names = {p.name for p in out_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names


def test_cli_sample_without_a_trained_model_says_what_to_do(ran, tmp_path, capsys):
    cfg, _, _ = ran
    other = cfg.train.model_copy(update={"steps": 13})
    assert main(["sample", "--config", _config_file(cfg, tmp_path, train=other)]) == 2
    err = capsys.readouterr().err
    assert "no trained model for this configuration" in err and "(train: will run)" in err
    assert main(["export", str(tmp_path / "x"), "--model", str(tmp_path)]) == 2
    assert "not a train artifact directory: no model.pt, config.json" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_temporary_server_answers_and_stops() -> None:
    import httpx

    from fineflow.server import TemporaryServer

    server = TemporaryServer()  # launched at once; `wait_ready` is where a run waits
    try:
        server.wait_ready()
        assert httpx.get(f"{server.api_url}/health").status_code == 200
    finally:
        server.stop()
    assert server.process.poll() is not None


def test_a_configured_api_starts_no_server(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from fineflow.server import start_server

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert start_server() is None
    monkeypatch.delenv("PREFECT_API_URL")  # named by the active profile instead
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('active = "ui"\n[profiles.ui]\nPREFECT_API_URL = "http://h:4200/api"\n')
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(profiles))
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    assert start_server() is None
    profiles.write_text('active = "ui"\n[profiles.ui]\n')  # none named: one is started
    server = start_server()
    assert server is not None
    try:  # every thread and process of the run finds it in the environment
        assert os.environ["PREFECT_API_URL"] == server.api_url
    finally:
        server.stop()
    assert "PREFECT_API_URL" not in os.environ
