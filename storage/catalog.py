"""The DuckDB catalog of the corpus: connections and table definitions, nothing else.

One writer per database file (the dedup stage, inside its artifact's temporary
directory); every reader opens it read-only. Nothing connects at import time.

    documents   one row per extracted document, in corpus order (`ordinal`: WARC order
                as listed, then row order within the WARC's docs.parquet), with its
                near-duplicate cluster: cluster_id = id of the cluster's first document,
                the one kept; a document without near-duplicates is its own cluster.
    dedup_stats one row per WARC: docs, kept, dropped_duplicate.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

DOCUMENTS_DDL = """
CREATE TABLE documents (
    id           VARCHAR NOT NULL,
    ordinal      BIGINT  NOT NULL,
    url          VARCHAR,
    host         VARCHAR,
    warc         VARCHAR,
    date         VARCHAR,
    text         VARCHAR,
    length       BIGINT,
    cluster_id   VARCHAR NOT NULL,
    cluster_size INTEGER NOT NULL,
    keep         BOOLEAN NOT NULL
)
"""

DEDUP_STATS_DDL = """
CREATE TABLE dedup_stats (
    warc_index        INTEGER NOT NULL,
    warc              VARCHAR NOT NULL,
    docs              BIGINT  NOT NULL,
    kept              BIGINT  NOT NULL,
    dropped_duplicate BIGINT  NOT NULL
)
"""


@contextmanager
def connect(path: Path, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the database file at `path`, closed (and checkpointed) on exit."""
    con = duckdb.connect(str(path), read_only=read_only)
    try:
        yield con
    finally:
        con.close()


def create_corpus_tables(con: duckdb.DuckDBPyConnection) -> None:
    """The tables of a corpus database (see the module docstring); fails if they exist."""
    con.execute(DOCUMENTS_DDL)
    con.execute(DEDUP_STATS_DDL)
