"""URL filter at UT1 scale: 4.5M synthetic domains in UT1 format -> load time, lookups/s, RSS.

    .venv/bin/python bench/url_filter.py [--domains 4500000]

Writes `blacklists/adult/{domains,urls}` (and the .tar.gz of them) under a temporary
directory, loads them the way the url_filter stage does, then classifies URLs of which
half are on listed domains (at a random subdomain depth) and half are not.
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

from fineflow.config import UrlFilterConfig
from fineflow.tasks.url_filter import (
    UrlFilter,
    _cached_blocklist,
    host_of,
    read_blocklist,
    url_reason,
)

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


def _measure(blocklist: Path, archive: Path, probe: list[str], out: dict) -> None:
    """In a fresh process, so RSS is the filter's own, not the generator's."""
    rss_start = peak_rss_mb()
    t0 = time.perf_counter()
    flt = UrlFilter.from_config(UrlFilterConfig(blocklist=blocklist))
    out["load_dir"] = time.perf_counter() - t0
    out["rss_loaded"] = peak_rss_mb() - rss_start
    out["n"] = len(flt.blocklist)
    hosts = [host_of(u) for u in probe]
    t0 = time.perf_counter()
    out["dropped"] = sum(
        url_reason(u, h, flt) is not None for u, h in zip(probe, hosts, strict=True)
    )
    out["lookups_s"] = len(probe) / (time.perf_counter() - t0)
    del flt
    _cached_blocklist.cache_clear()  # measure the archive load on its own
    t0 = time.perf_counter()
    read_blocklist(archive)
    out["load_tar"] = time.perf_counter() - t0
    out["rss_start"] = rss_start
    out["rss_peak"] = peak_rss_mb()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domains", type=int, default=4_500_000)
    ap.add_argument("--lookups", type=int, default=500_000)
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
        with ctx.Manager() as manager:
            out = manager.dict()
            p = ctx.Process(target=_measure, args=(adult.parent, archive, probe, out))
            p.start()
            p.join()
            r = dict(out)
    print(f"domains file        {r['n']:,} domains, {size_mb:.0f} MB (+100k URLs)")
    print(f"load (directory)    {r['load_dir']:.1f} s")
    print(f"load (.tar.gz)      {r['load_tar']:.1f} s")
    print(f"memory of the list  {r['rss_loaded']:.0f} MB RSS growth on load")
    print(f"peak RSS            {r['rss_peak']:.0f} MB (process at start: {r['rss_start']:.0f} MB)")
    print(f"URL checks          {r['lookups_s']:,.0f} URLs/s (full FineWeb rule set, one core)")
    print(
        f"dropped             {r['dropped']:,} of {args.lookups:,} (expected {args.lookups // 2:,})"
    )


if __name__ == "__main__":
    main()
