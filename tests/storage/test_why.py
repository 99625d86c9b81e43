"""storage/why.py: a key's named parts, and the one line that says why a stage reruns."""

from __future__ import annotations

from pathlib import Path

from fineflow.config import DedupConfig, ExtractConfig, PipelineConfig
from fineflow.storage import why
from fineflow.storage.artifacts import ArtifactWriter
from fineflow.storage.fingerprint import affects_output, fingerprint
from fineflow.tasks.extract import extract_text


def manifest(root: Path, warc: str, text: str, key: str = "k1"):
    with ArtifactWriter(root, "url_filter", key, warc=warc) as out:
        out.path("records.parquet").write_text(text)
        return out.commit(None, counts={"kept": 1})


def test_parts_name_config_leaves_inputs_and_code_but_never_the_data_root(tmp_path):
    up = manifest(tmp_path, "a.warc.gz", "x")
    inputs = {"root": str(tmp_path), "warc": up, "records": up, "cfg": ExtractConfig()}
    parts = why.key_parts(extract_text.fn, inputs)
    assert parts["cfg.min_chars"] == "200"
    assert "input warc" in parts and "input records" in parts
    assert any(k.startswith("code fineflow.tasks.extract.") for k in parts)
    assert not any(str(tmp_path) in k or str(tmp_path) in v for k, v in parts.items())
    assert "cfg.workers" not in parts  # declared unable to change an output
    moved = why.key_parts(extract_text.fn, {**inputs, "root": "/elsewhere"})
    assert moved == parts


def test_an_artifact_rebuilt_under_another_key_with_the_same_content_is_the_same_input(tmp_path):
    a = manifest(tmp_path, "a.warc.gz", "same", key="k1")
    b = manifest(tmp_path, "a.warc.gz", "same", key="k2")
    c = manifest(tmp_path, "a.warc.gz", "other", key="k3")
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)


def test_runtime_fields_are_declared_on_the_config_and_stay_out_of_fingerprints():
    base, tuned = DedupConfig(), DedupConfig(threads=1, memory_limit="1GB")
    assert fingerprint(base) == fingerprint(tuned)
    assert fingerprint(base) != fingerprint(DedupConfig(scope="global"))
    fields = DedupConfig.model_fields
    assert not affects_output(fields["threads"]) and affects_output(fields["scope"])
    assert (
        PipelineConfig.model_json_schema()["$defs"]["DedupConfig"]["properties"]["threads"][
            "affects_output"
        ]
        is False
    )  # the Prefect UI's form shows the declaration too


def test_explain_says_what_changed_in_words():
    old = {
        "cfg.min_chars": "200",
        "input docs[filter/a.warc.gz]": "1",
        "code fineflow.tasks.quality.judge": "aa",
        "STAGE_VERSION": "2",
    }
    assert why.explain("extract", None, old) == why.FIRST
    assert why.explain("extract", old, dict(old)) == "its cache record is gone"
    new = {**old, "cfg.min_chars": "100"}
    assert why.explain("extract", old, new) == "extract.min_chars 200 -> 100"
    new = {**old, "input docs[filter/a.warc.gz]": "2", "input docs[filter/b.warc.gz]": "3"}
    said = why.explain("dedup", old, new)
    assert "upstream output changed: docs[filter/a.warc.gz]" in said
    assert "new input: docs[filter/b.warc.gz]" in said
    new = {**old, "code fineflow.tasks.quality.judge": "bb", "STAGE_VERSION": "3"}
    said = why.explain("filter", old, new)
    assert "code changed: fineflow.tasks.quality.judge" in said and "STAGE_VERSION 2 -> 3" in said


def test_records_follow_a_run_from_miss_to_completion_and_summarize(tmp_path):
    why.write(
        tmp_path, "extract", "a.warc.gz", {"parts": None, "pending": {"x": "1"}, "reason": "r1"}
    )
    why.write(tmp_path, "extract", "b.warc.gz", {"parts": {"x": "1"}, "reason": None})
    why.write(
        tmp_path, "extract", "c.warc.gz", {"parts": None, "pending": {"x": "2"}, "reason": "r1"}
    )
    why.completed(tmp_path, "extract", "a.warc.gz")
    assert why.read(tmp_path, "extract", "a.warc.gz") == {"parts": {"x": "1"}, "reason": "r1"}
    reasons = why.reasons(tmp_path, "extract", ["a.warc.gz", "b.warc.gz", "c.warc.gz"])
    assert reasons == ["r1", "r1"]
    assert why.summarize(reasons) == "r1 (2 of 2)"
    assert why.summarize(["r1", "r2", "r1"]) == "r1 (2 of 3); and 1 other reason(s)"
    assert why.read(tmp_path, "nothing", "x") == {}
