"""URL filter at UT1 scale: 4.5M synthetic domains in UT1 format -> build time, lookups/s,
memory per worker.

    .venv/bin/python bench/url_filter.py [--domains 4500000] [--workers 2]

Writes `blacklists/adult/{domains,urls}` (and the .tar.gz of them) under a temporary
directory. A fresh process compiles the list once under a data root, the way the
url_filter stage does (tasks/url_filter.py: sorted 64-bit hashes, memory-mapped); then
`--workers` fresh processes at once each load it from that root, run the url_filter
stage on a bundled sample WARC and classify URLs of which half are on listed domains
(at a random subdomain depth) and half are not, and report their memory: RSS, PSS (a
shared page counted once across the processes that map it) and private memory, from
/proc/self/smaps_rollup. The list read into one process without a data root (what each
worker held before: a Python set of 4.5M hashes, ~0.6 GB) is measured beside it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import resource
import tarfile
import tempfile
import time
from pathlib import Path

from fineflow.config import SAMPLE_DIR, UrlFilterConfig
from fineflow.tasks.url_filter import UrlFilter, filter_warc, host_of, read_blocklist, url_reason

TLDS = ["com", "net", "org", "fr", "de", "ru", "co.uk", "com.br", "info", "xyz"]


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synth_domains(n: int, rng: random.Random) -> list[str]:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-"
    out = []
    for i in range(n):
        name = "".join(rng.choices(alphabet, k=rng.randint(6, 18))).strip("-") or "x"
        out.append(f"{name}{i}.{TLDS[i % len(TLDS)]}")
    return out


def memory_mb() -> dict[str, float]:
    """This process's RSS, PSS and private memory now, and its peak RSS (MB)."""
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":")
        out[name] = int(value.split()[0]) / 1024
    return {
        "rss": out["Rss"],
        "pss": out["Pss"],
        "private": out["Private_Clean"] + out["Private_Dirty"],
        "peak": peak_rss_mb(),
    }


def _compile(blocklist: Path, root: Path, out: dict) -> None:
    """Fresh process: the one-time build under the data root."""
    t0 = time.perf_counter()
    UrlFilter.from_config(UrlFilterConfig(blocklist=blocklist), root)
    out["build_s"] = time.perf_counter() - t0
    out["build_peak"] = peak_rss_mb()


def _worker(
    blocklist: Path, root: Path | None, probe: list[str], start: mp.Barrier, out: dict, i: int
) -> None:
    """Fresh process: a url_filter worker. Memory is read while every worker holds the list."""
    import tempfile as tf

    base = memory_mb()
    t0 = time.perf_counter()
    flt = UrlFilter.from_config(UrlFilterConfig(blocklist=blocklist), root)
    load_s = time.perf_counter() - t0
    warc = sorted((SAMPLE_DIR / "warcs").glob("*.warc.gz"))[0]
    with tf.TemporaryDirectory() as tmp:
        filter_warc(warc, Path(tmp) / "records.parquet", UrlFilterConfig(blocklist=blocklist), root)
    hosts = [host_of(u) for u in probe]
    t0 = time.perf_counter()
    dropped = sum(url_reason(u, h, flt) is not None for u, h in zip(probe, hosts, strict=True))
    lookups_s = len(probe) / (time.perf_counter() - t0)
    start.wait()  # every worker has the list loaded and used
    out[i] = {"base": base, "now": memory_mb(), "load_s": load_s, "lookups_s": lookups_s,
              "dropped": dropped, "n": len(flt.blocklist)}  # fmt: skip
    start.wait()


def _workers(ctx, n: int, blocklist: Path, root: Path | None, probe: list[str]) -> list[dict]:
    with ctx.Manager() as manager:
        out, barrier = manager.dict(), ctx.Barrier(n)
        procs = [
            ctx.Process(target=_worker, args=(blocklist, root, probe, barrier, out, i))
            for i in range(n)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        return [out[i] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domains", type=int, default=4_500_000)
    ap.add_argument("--lookups", type=int, default=500_000)
    ap.add_argument("--workers", type=int, default=2, help="processes loading the list at once")
    args = ap.parse_args()
    rng = random.Random(0)
    domains = synth_domains(args.domains, rng)
    with tempfile.TemporaryDirectory() as tmp:
        adult = Path(tmp) / "blacklists" / "adult"
        adult.mkdir(parents=True)
        (adult / "domains").write_text("\n".join(domains) + "\n")
        (adult / "urls").write_text("\n".join(f"{d}/page.html" for d in domains[:100_000]))
        archive = Path(tmp) / "blacklists.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(adult.parent, arcname="blacklists")
        size_mb = (adult / "domains").stat().st_size / 1e6
        probe = [
            f"https://www.{'sub.' * rng.randint(0, 2)}{rng.choice(domains)}/a/page-{i}.html"
            if i % 2
            else f"https://www.not-listed-{i}.example/a/page-{i}.html"
            for i in range(args.lookups)
        ]
        del domains
        ctx = mp.get_context("spawn")
        root = Path(tmp) / "data"
        with ctx.Manager() as manager:
            out = manager.dict()
            p = ctx.Process(target=_compile, args=(adult.parent, root, out))
            p.start()
            p.join()
            built = dict(out)
        t0 = time.perf_counter()
        read_blocklist(archive)
        load_tar = time.perf_counter() - t0
        mapped = _workers(ctx, args.workers, adult.parent, root, probe)
        private = _workers(ctx, 1, adult.parent, None, probe)[0]
    r = mapped[0]
    print(f"domains file        {r['n']:,} domains, {size_mb:.0f} MB (+100k URLs)")
    print(
        f"compile once        {built['build_s']:.1f} s into <root>/_compiled (peak RSS of that "
        f"process {built['build_peak']:.0f} MB); reading the .tar.gz instead {load_tar:.1f} s"
    )
    print(f"load, compiled      {r['load_s'] * 1e3:.0f} ms per worker (memory-mapped)")
    for i, w in enumerate(mapped):
        now, base = w["now"], w["base"]
        print(
            f"worker {i} (mapped)   RSS {now['rss']:.0f} MB, PSS {now['pss']:.0f} MB, private "
            f"{now['private']:.0f} MB, peak RSS {now['peak']:.0f} MB (at start: RSS "
            f"{base['rss']:.0f} MB); the list and the stage add "
            f"{now['rss'] - base['rss']:.0f} MB RSS"
        )
    now, base = private["now"], private["base"]
    print(
        f"in-process read     RSS {now['rss']:.0f} MB, private {now['private']:.0f} MB, peak RSS "
        f"{now['peak']:.0f} MB: the list and the stage add {now['rss'] - base['rss']:.0f} MB RSS "
        f"(load {private['load_s']:.1f} s)"
    )
    print(f"URL checks          {r['lookups_s']:,.0f} URLs/s (full FineWeb rule set, one core)")
    print(
        f"dropped             {r['dropped']:,} of {args.lookups:,} (expected {args.lookups // 2:,})"
    )


if __name__ == "__main__":
    main()
