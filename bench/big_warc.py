"""A big WARC of real pages: the bundled sample's response records, replicated with new URLs.

    .venv/bin/python bench/big_warc.py OUT.warc.gz --mb 80      # or --copies 1

Copy k of a record gets the URL `<url>?fineflow-copy=<k>` (the host, so the URL filter's
decisions, stays the same) and a fresh WARC-Record-ID (a uuid5 of the new URL); the HTTP
headers and payload are the original's bytes. Copies are written in rounds (every
record once, then every record again), each record its own gzip member, as Common Crawl
writes them, until the file reaches `--mb` megabytes. Deterministic: the same arguments
give the same file.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import uuid
from pathlib import Path

from warcio.archiveiterator import ArchiveIterator
from warcio.warcwriter import WARCWriter

from fineflow.config import SAMPLE_DIR


def sample_responses() -> list[tuple[bytes, bytes, str]]:
    """(WARC header block, HTTP block, URL) of every response record of the sample WARCs."""
    out = []
    for path in sorted((SAMPLE_DIR / "warcs").glob("*.warc.gz")):
        with open(path, "rb") as f:
            for rec in ArchiveIterator(f):
                if rec.rec_type != "response":
                    continue
                url = rec.rec_headers.get_header("WARC-Target-URI")
                http = rec.http_headers.to_bytes() if rec.http_headers else b""
                out.append((http, rec.raw_stream.read(), url))
    return out


def build(out: Path, megabytes: float, copies: int | None = None) -> tuple[int, int]:
    """Write the WARC (`copies` rounds, else until `megabytes`); returns (responses, bytes)."""
    records = sample_responses()
    writer_buf = open(out, "wb")  # noqa: SIM115 - closed below, after the last member
    writer = WARCWriter(writer_buf, gzip=True)
    n = copy = 0
    target = int(megabytes * 1e6) if copies is None else 1 << 62
    while writer_buf.tell() < target and (copies is None or copy < copies):
        for http, body, url in records:
            new_url = f"{url}{'&' if '?' in url else '?'}fineflow-copy={copy}"
            rid = f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, new_url)}>"
            rec = writer.create_warc_record(
                new_url,
                "response",
                payload=io.BytesIO(http + body),
                warc_headers_dict={"WARC-Record-ID": rid, "WARC-Date": "2024-03-01T00:00:00Z"},
            )
            writer.write_record(rec)
            n += 1
            if writer_buf.tell() >= target:
                break
        copy += 1
    size = writer_buf.tell()
    writer_buf.close()
    return n, size


def split(src: Path, parts: int, out_dir: Path) -> list[Path]:
    """`src`'s response records dealt round-robin into `parts` WARCs (record i into part
    i % parts), bytes as they were; other records are left out."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{src.name.removesuffix('.warc.gz')}.part{i}.warc.gz" for i in range(parts)]
    files = [open(p, "wb") for p in paths]  # noqa: SIM115 - closed below
    writers = [WARCWriter(f, gzip=True) for f in files]
    with open(src, "rb") as f:
        i = 0
        for rec in ArchiveIterator(f):
            if rec.rec_type == "response":
                writers[i % parts].write_record(rec)
                i += 1
    for f in files:
        f.close()
    return paths


def output_digest(folder: Path, names: tuple[str, ...]) -> str:
    """sha256 over the files, streamed (the outputs never sit in memory), 16 hex digits."""
    h = hashlib.sha256()
    for name in names:
        with open(folder / name, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--mb", type=float, default=80.0, help="size of the WARC, in MB")
    ap.add_argument("--copies", type=int, help="rounds of the sample's records instead of --mb")
    args = ap.parse_args()
    n, size = build(args.out, args.mb, args.copies)
    print(f"{args.out}: {n:,} response records, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    sys.exit(main())
