"""An object-storage data root, against a real S3 server (moto) on 127.0.0.1.

The data flow (to dedup) runs with its data root mirrored to s3://; a second machine,
played by an empty local working copy on the same bucket, gets every stage `Cached` with
the same manifests and downloads only what a stage that runs reads (or what the run
reports); an upload cut short (files up, manifest.json not) is never trusted.
"""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path

import pytest
import s3fs  # noqa: F401  (the s3:// backend; the test extra installs it)
from moto import server as moto_server
from pydantic import ValidationError

from fineflow.config import PipelineConfig
from fineflow.flows.grow import taken_prefix
from fineflow.status import RESTORES, pipeline_status
from fineflow.storage import layout
from fineflow.storage.artifacts import MANIFEST_NAME, ArtifactWriter
from fineflow.storage.remote import Remote, RemoteMiss
from tests.helpers.e2e import small_config

BUCKET = "fineflow-test"
DATA_STAGES = ["download", "url_filter", "extract", "filter", "minhash", "dedup"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A local S3 endpoint, one bucket; credentials and endpoint through the AWS env vars."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            mp.setenv(name, value)
        import fsspec

        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir(BUCKET)
        yield fs
    server.stop()


def _artifact(root: Path, key: str, payload: bytes):
    with ArtifactWriter(root, "extract", key, warc="w.warc.gz") as out:
        out.path("docs.parquet").write_bytes(payload)
        out.path("sub/extra.bin").write_bytes(payload[::-1])
        return out.commit(None, counts={"kept": 1})


def test_artifact_round_trip_and_a_cut_upload_is_not_trusted(s3, tmp_path):
    remote = Remote(f"s3://{BUCKET}/unit")
    m = _artifact(tmp_path / "a", "k1", b"real bytes")
    assert remote.push_artifact(tmp_path / "a", m)
    assert not remote.push_artifact(tmp_path / "a", m)  # already there: nothing sent

    remote.fetch_artifact(tmp_path / "b", m)
    got = layout.artifact_dir(tmp_path / "b", "extract", "k1")
    assert (got / "sub/extra.bin").read_bytes() == b"setyb laer"
    assert (got / MANIFEST_NAME).read_bytes() == (
        layout.artifact_dir(tmp_path / "a", "extract", "k1") / MANIFEST_NAME
    ).read_bytes()

    # an upload killed before its manifest: the files are there, the artifact is not
    s3.rm_file(f"{BUCKET}/unit/extract/k1/{MANIFEST_NAME}")
    assert s3.exists(f"{BUCKET}/unit/extract/k1/docs.parquet")
    with pytest.raises(RemoteMiss, match="no manifest"):
        remote.fetch_artifact(tmp_path / "c", m)
    assert not layout.artifact_dir(tmp_path / "c", "extract", "k1").exists()

    # a file changed under its manifest fails its check and leaves nothing behind
    remote.push_artifact(tmp_path / "a", m)
    s3.pipe_file(f"{BUCKET}/unit/extract/k1/docs.parquet", b"fake bytes")
    with pytest.raises(RemoteMiss, match="does not match"):
        remote.fetch_artifact(tmp_path / "d", m)
    assert not any((tmp_path / "d" / "extract").iterdir())


def test_a_broken_remote_artifact_is_taken_down(s3, tmp_path):
    """A manifest whose file changed on the bucket is no longer a promise: localize drops it."""
    remote = Remote(f"s3://{BUCKET}/broken")
    m = _artifact(tmp_path / "a", "k", b"good bytes")
    remote.push_artifact(tmp_path / "a", m)
    assert remote.holds(m)
    assert remote.localize(tmp_path / "b", [m]) == [m]
    assert remote.localize(tmp_path / "b", [m]) == []  # intact here: nothing fetched again
    s3.pipe_file(f"{BUCKET}/broken/extract/k/docs.parquet", b"bad bytes!")
    with pytest.raises(RemoteMiss, match="taken down") as miss:
        remote.localize(tmp_path / "c", [m])
    assert miss.value.broken
    assert not remote.holds(m)  # so the next run rebuilds it instead of trusting it
    assert not layout.artifact_dir(tmp_path / "c", "extract", "k").exists()


def test_a_file_url_mirror_makes_its_directories(tmp_path):
    remote = Remote(f"file://{tmp_path}/mirror")
    m = _artifact(tmp_path / "a", "k", b"local bytes")
    assert remote.push_artifact(tmp_path / "a", m)
    assert (tmp_path / "mirror/extract/k/sub/extra.bin").read_bytes() == b"setyb lacol"
    remote.fetch_artifact(tmp_path / "b", m)
    assert (tmp_path / "b/extract/k/docs.parquet").read_bytes() == b"local bytes"
    (tmp_path / "mirror/extract/k" / MANIFEST_NAME).unlink()
    with pytest.raises(RemoteMiss, match="no manifest"):
        remote.fetch_artifact(tmp_path / "c", m)


def test_a_rebuilt_artifact_replaces_the_remote_one_manifest_last(s3, tmp_path):
    remote = Remote(f"s3://{BUCKET}/rebuilt")
    old = _artifact(tmp_path / "a", "k", b"first build")
    remote.push_artifact(tmp_path / "a", old)
    new = _artifact(tmp_path / "a", "k", b"second build")
    assert remote.push_artifact(tmp_path / "a", new)
    with pytest.raises(RemoteMiss, match="another build"):
        remote.fetch_artifact(tmp_path / "b", old)
    remote.fetch_artifact(tmp_path / "b", new)
    assert (tmp_path / "b/extract/k/docs.parquet").read_bytes() == b"second build"


def test_an_object_store_data_root_is_validated_at_the_start(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cfg = PipelineConfig(data_root="s3://bucket/runs/a/")
    assert cfg.remote_root == "s3://bucket/runs/a"
    assert cfg.data_root == tmp_path / "fineflow" / "s3" / "bucket" / "runs" / "a"
    assert PipelineConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    for bad, field, says in [
        ({"data_root": "nosuch://b/x"}, "data_root", "unknown fsspec protocol"),
        ({"data_root": "gcs://b/x"}, "data_root", "gcsfs"),  # backend not installed here
        ({"remote_root": "s3://"}, "remote_root", "no bucket"),
        ({"remote_root": "data/elsewhere"}, "remote_root", "not a URL"),
    ]:
        with pytest.raises(ValidationError) as err:
            PipelineConfig.model_validate(bad)
        (e,) = err.value.errors()
        assert e["loc"] == (field,) and says in e["msg"], (bad, e)


def _run(root: Path, warcs: list[str], url: str, stop_after: str = "dedup"):
    from fineflow.flows.pipeline import pipeline

    cfg = small_config(root, warcs, stop_after=stop_after, remote_root=url)
    result = pipeline(cfg)
    return {line.stage: line.status for line in result.lines}, result.outputs.get("dedup")


def _local_manifests(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob(f"*/*/{MANIFEST_NAME}"))
    }


def test_a_second_machine_gets_the_first_stages_cached(s3, prefect_server, warcs, tmp_path):
    """The short version (download, url_filter of one WARC); the slow one goes to dedup."""
    url = f"s3://{BUCKET}/short"
    first, _ = _run(tmp_path / "machine1", warcs[:1], url, "url_filter")
    assert first == {"download": "ran", "url_filter": "ran"}
    made = _local_manifests(tmp_path / "machine1")
    # before machine 2 runs anything: `fineflow status` and the crawl growth see the bucket
    fresh = small_config(tmp_path / "machine2", warcs[:1], stop_after="url_filter", remote_root=url)
    assert {s.stage: s.summary for s in pipeline_status(fresh)} == {
        "download": RESTORES,
        "url_filter": RESTORES,
    }
    assert taken_prefix(tmp_path / "machine2", warcs[:2]) == 0
    assert taken_prefix(tmp_path / "machine2", warcs[:2], remote=url) == 1
    second, _ = _run(tmp_path / "machine2", warcs[:1], url, "url_filter")
    assert second == {"download": "cached", "url_filter": "cached"}
    assert _local_manifests(tmp_path / "machine2") == {}  # cached: nothing was downloaded
    assert {s.stage: s.summary for s in pipeline_status(fresh)} == {
        "download": RESTORES,  # the record is here now, the artifact still only on the bucket
        "url_filter": RESTORES,
    }
    # a stage that runs fetches the inputs it reads (the WARC and its URL verdicts), and
    # only those: a second WARC's chain downloads nothing of the first WARC's
    grown, _ = _run(tmp_path / "machine2", warcs[:1], url, "extract")
    assert grown == {"download": "cached", "url_filter": "cached", "extract": "ran"}
    here = _local_manifests(tmp_path / "machine2")
    assert {k: v for k, v in here.items() if not k.startswith("extract/")} == made

    (url_filter,) = [p for p in made if p.startswith("url_filter/")]
    s3.rm_file(f"{BUCKET}/short/{url_filter}")  # an upload cut short before its manifest
    third, _ = _run(tmp_path / "machine3", warcs[:1], url, "url_filter")
    assert third == {"download": "cached", "url_filter": "ran"}
    assert s3.cat_file(f"{BUCKET}/short/{url_filter}") == made[url_filter]

    # a run killed mid-upload left the download's files up, no manifest, no record: the
    # next run, all cached where it ran, finishes the upload
    (download,) = [p for p in made if p.startswith("download/")]
    s3.rm_file(f"{BUCKET}/short/{download}")
    for rec in s3.ls(f"{BUCKET}/short/_prefect/results"):
        if Path(rec).name.startswith("download-"):
            s3.rm_file(rec)
    fourth, _ = _run(tmp_path / "machine3", warcs[:1], url, "url_filter")
    assert fourth == {"download": "cached", "url_filter": "cached"}
    assert s3.cat_file(f"{BUCKET}/short/{download}") == made[download]
    assert len(s3.ls(f"{BUCKET}/short/_prefect/results")) == 3  # download, url_filter, extract


@pytest.mark.slow
def test_a_second_machine_restores_the_corpus(s3, prefect_server, warcs, tmp_path):
    url = f"s3://{BUCKET}/flow"
    first, corpus = _run(tmp_path / "machine1", warcs[:2], url)
    assert first == {s: "ran" for s in DATA_STAGES}
    made = _local_manifests(tmp_path / "machine1")
    assert len(made) == 5 * 2 + 1
    for rel, body in made.items():  # every artifact and its record are up
        assert s3.cat_file(f"{BUCKET}/flow/{rel}") == body
    assert len(s3.ls(f"{BUCKET}/flow/_prefect/results")) == len(made)

    second, again = _run(tmp_path / "machine2", warcs[:2], url)  # an empty working copy
    assert second == {s: "cached" for s in DATA_STAGES}
    assert again == corpus
    # all cached: only what the run reports (the corpus) came down
    assert _local_manifests(tmp_path / "machine2") == {
        f"{corpus.dir}/{MANIFEST_NAME}": made[f"{corpus.dir}/{MANIFEST_NAME}"]
    }
    corpus_db = again.path(tmp_path / "machine2", "corpus.duckdb")
    assert corpus_db.stat().st_size == corpus.files[0].bytes

    # the corpus grows by a WARC on that machine: dedup runs and reads the old WARCs'
    # filtered documents and signatures (and the funnel's counts), never their WARC files
    grown_stages, grown = _run(tmp_path / "machine2", warcs[:3], url)
    assert grown_stages == {
        **{s: "ran 1/3" for s in DATA_STAGES if s != "dedup"},
        "dedup": "ran",
    }
    assert grown.counts != corpus.counts
    here = Counter(p.split("/")[0] for p in _local_manifests(tmp_path / "machine2"))
    # the new WARC's own chain, the old WARCs' documents and signatures; their WARC files,
    # URL verdicts and extracted pages (the funnel needs only the counts) stayed on the bucket
    assert here == {
        "download": 1,
        "url_filter": 1,
        "extract": 1,
        "filter": 3,
        "minhash": 3,
        "dedup": 2,
    }

    # dedup's upload cut short before its manifest (so before its record too), and one
    # WARC's minhash manifest gone under a record: neither is trusted, both run again
    s3.rm_file(f"{BUCKET}/flow/{corpus.dir}/{MANIFEST_NAME}")
    for rec in s3.ls(f"{BUCKET}/flow/_prefect/results"):
        if Path(rec).name.startswith("dedup-"):
            s3.rm_file(rec)
    minhash = sorted(p for p in made if p.startswith("minhash/"))[0]
    s3.rm_file(f"{BUCKET}/flow/{minhash}")
    third, rebuilt = _run(tmp_path / "machine3", warcs[:2], url)
    assert third == {**{s: "cached" for s in DATA_STAGES}, "minhash": "ran 1/2", "dedup": "ran"}
    assert rebuilt.fingerprint == corpus.fingerprint  # same corpus, recomputed
    assert s3.exists(f"{BUCKET}/flow/{minhash}")  # the runs' uploads completed the mirror
    assert s3.exists(f"{BUCKET}/flow/{corpus.dir}/{MANIFEST_NAME}")
