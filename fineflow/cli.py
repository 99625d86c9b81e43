"""`fineflow`: run the pipeline, or rerun one stage, from the command line.

    fineflow run [--preset NAME] [--config FILE] [--set train.steps=100 ...] [--stop-after STAGE]
    fineflow rerun STAGE [...]     same, with STAGE's cache refreshed
    fineflow status [--why] [...]  per stage: cached, stale or will run (and why); runs nothing
    fineflow verify [--repair]     rehash every artifact; name (or remove) the damaged ones
    fineflow sample [PROMPT ...] [...]   continue prompts with the model the config trained
    fineflow export OUT_DIR [...]  that model as a Hugging Face transformers directory
    fineflow report [--open] [...] the path of the config's run report (report.html)
    fineflow server [--stop]       the local Prefect server runs share: where, or stop it

Exit status of run/rerun: 0 every WARC made it; 3 the run finished but some WARCs
failed and were left out (named at the end); 1 the run failed; 2 a bad config or
command line (nothing ran).

The config file is JSON or YAML shaped like PipelineConfig; `--set` overrides one
field by its dotted name. A bad value fails before anything runs, naming the field.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fineflow.config import PRESETS_FILE, STAGES, PipelineConfig, deep_merge
from fineflow.server import prefect_api, start_server


def _quiet_prefect() -> None:
    """No telemetry, and no phoning home from a machine that may have no network."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _set(tree: dict[str, Any], dotted: str, raw: str) -> None:
    import yaml  # Prefect depends on PyYAML

    node = tree
    *parents, leaf = dotted.split(".")
    for name in parents:
        node = node.setdefault(name, {})
    node[leaf] = yaml.safe_load(raw)


def preset(name: str) -> dict[str, Any]:
    """The `cfg` parameters of deployment `name` in prefect.yaml (CLI and UI share presets)."""
    import yaml

    spec = yaml.safe_load(PRESETS_FILE.read_text())
    names = [d["name"] for d in spec["deployments"]]
    if name not in names:
        raise SystemExit(f"no preset {name!r} in prefect.yaml; there are: {', '.join(names)}")
    return spec["deployments"][names.index(name)].get("parameters", {}).get("cfg", {})


def load_config(
    path: str | None,
    overrides: list[str],
    force: list[str],
    stop_after: str | None,
    preset_name: str | None = None,
) -> PipelineConfig:
    """Build and validate the PipelineConfig from a preset, a file, `--set`s and flags."""
    import yaml

    tree: dict[str, Any] = preset(preset_name) if preset_name else {}
    if path:
        try:
            text = Path(path).read_text()
            loaded = json.loads(text) if path.endswith(".json") else (yaml.safe_load(text) or {})
        except (OSError, ValueError, yaml.YAMLError) as exc:  # JSONDecodeError is a ValueError
            raise SystemExit(f"--config {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise SystemExit(
                f"--config {path}: wants a mapping of fields, got {type(loaded).__name__}"
            )
        tree = deep_merge(tree, loaded)
    for item in overrides:
        if "=" not in item:
            raise SystemExit(f"--set wants FIELD=VALUE, got {item!r}")
        _set(tree, *item.split("=", 1))
    if force:
        tree["force"] = sorted(set(tree.get("force", [])) | set(force))
    if stop_after:
        tree["stop_after"] = stop_after
    return PipelineConfig.model_validate(tree)


def _describe_errors(err: ValidationError) -> str:
    lines = [f"invalid config ({err.error_count()} problem(s)):"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def print_summary(result, cfg: PipelineConfig, seconds: float) -> None:
    ran = sum(1 for line in result.lines if line.ran)
    print(
        f"\nfineflow: {len(result.lines)} stages, {ran} ran, "
        f"{len(result.lines) - ran} cached, {seconds:.1f}s in all"
    )
    print(f"{'stage':<11} {'status':<16} {'seconds':>8}  key figure")
    for line in result.lines:
        print(line)
    from fineflow.storage.why import FIRST

    said = [line for line in result.lines if line.why]
    if said and all(line.why.startswith(FIRST) for line in said):
        print(f"why they ran: {FIRST} (fineflow status --why says what a change would rerun)")
    elif said:
        print("why they ran:")
        for line in said:
            print(f"  {line.stage:<11} {line.why}")
    root = cfg.data_root
    mirror = f" (local working copy of {cfg.remote_root})" if cfg.remote_root else ""
    print(f"\noutputs under {root}{mirror}:")
    from fineflow.flows.stages import STAGES

    for stage in STAGES:
        if stage.output and (m := result.outputs.get(stage.name)) is not None:
            name, label = stage.output
            print(f"  {label:<24} {root / m.dir / name}")
    if result.outputs.get("dedup") is not None:
        print(f"  {'extracted docs per WARC':<24} {root / 'extract'}/*/docs.parquet")
        print(f"  {'filtered docs per WARC':<24} {root / 'filter'}/*/docs.parquet")
    if result.outputs.get("train") is not None:
        print(
            '\nsample it: fineflow sample "your prompt"; export it: fineflow export <dir> '
            "(with this run's options)"
        )
    if (report := result.outputs.get("report")) is not None:
        print(f"the run, step by step: {(root / report.dir / 'report.html').as_uri()}")


def use_model(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    """`sample` and `export`: the config's trained model (or --model), used; nothing runs."""
    from fineflow.sample import ModelDirError, check_model_dir, describe_model, trained_model_dir

    try:  # no trained model, a damaged one, or an export target not to write into
        model_dir = check_model_dir(args.model) if args.model else trained_model_dir(cfg)
        if args.command == "export":
            from fineflow.export import describe_export, export

            out = export(model_dir, args.out_dir)
            print(f"wrote {out} ({describe_export(out)}) from {model_dir}")
            return 0
        from fineflow.sample import sample

        ecfg = cfg.evaluate
        if args.prompts:
            ecfg = ecfg.model_copy(update={"prompts": args.prompts})
        print(describe_model(model_dir))
        print(
            f"{ecfg.max_new_tokens} new tokens, temperature {ecfg.temperature}, "
            f"top-k {ecfg.top_k}, top-p {ecfg.top_p}, seed {ecfg.seed}"
        )
        texts = sample(model_dir, ecfg)
    except ModelDirError as err:
        print(f"fineflow {args.command}: {err}", file=sys.stderr)
        return 2
    for prompt, text in zip(ecfg.prompts, texts, strict=True):
        print(f"\n>>> {prompt}\n{text}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fineflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "rerun", "status", "verify", "sample", "export", "report"):
        p = sub.add_parser(name)
        if name == "rerun":
            p.add_argument("stage", choices=STAGES, help="stage whose cache is refreshed")
        if name == "sample":
            p.add_argument("prompts", nargs="*", help="default: the config's evaluate.prompts")
        if name == "export":
            p.add_argument("out_dir", type=Path, help="directory to write the model into")
        if name in ("sample", "export"):
            p.add_argument("--model", type=Path, help="a train artifact dir (data/train/<key>)")
        p.add_argument("--preset", help="a deployment name in prefect.yaml, e.g. gpu-124m")
        p.add_argument("--config", help="JSON or YAML file shaped like PipelineConfig")
        p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
        p.add_argument("--force", action="append", default=[], choices=STAGES)
        p.add_argument("--stop-after", choices=STAGES)
        if name in ("run", "rerun"):
            p.add_argument("--debug", action="store_true", help="tracebacks in the terminal too")
            p.add_argument("--quiet", action="store_true", help="no progress lines in the terminal")
        if name == "report":
            p.add_argument("--open", action="store_true", help="open it in a web browser")
        if name == "verify":
            p.add_argument("--repair", action="store_true", help="remove damaged artifacts")
        if name == "status":
            p.add_argument("--why", action="store_true", help="say why each stage would run")
    ab = sub.add_parser("ablate", help="train models on variants of the corpus, compare them")
    ab.add_argument(
        "spec", type=Path, help="YAML: base, variants, seeds, tokens, eval, choice; or `sample`"
    )
    ab.add_argument("--debug", action="store_true", help="tracebacks in the terminal too")
    ab.add_argument("--quiet", action="store_true", help="no progress lines in the terminal")
    srv = sub.add_parser("server", help="the local Prefect server that runs share")
    srv.add_argument("--stop", action="store_true", help="stop it (runs using it lose their API)")
    args = parser.parse_args(argv)
    if args.command == "server":
        return server(args.stop)
    if args.command == "ablate":
        return ablate(args.spec, args.debug, args.quiet)

    force = args.force + ([args.stage] if args.command == "rerun" else [])
    try:
        cfg = load_config(args.config, args.set, force, args.stop_after, args.preset)
    except ValidationError as err:
        print(_describe_errors(err), file=sys.stderr)
        return 2
    except SystemExit as bad:  # an unreadable --config, a malformed --set, an unknown preset
        if not isinstance(bad.code, str):
            raise
        print(f"fineflow: {bad.code}", file=sys.stderr)
        return 2

    _quiet_prefect()
    if args.command in ("run", "rerun"):
        return run(cfg, debug=args.debug, quiet=args.quiet)
    if args.command == "verify":
        return verify(cfg, args.repair)
    if args.command == "status":
        from fineflow.status import describe

        print(describe(cfg, args.why))
        return 0
    if args.command in ("sample", "export"):
        return use_model(args, cfg)
    if args.command == "report":
        return show_report(cfg, args.open)
    raise AssertionError(args.command)


def ablate(path: Path, debug: bool, quiet: bool) -> int:
    """`fineflow ablate SPEC`: the ablation flow; the stages, the variants' table, the page."""
    from fineflow.ablation import BASE, BUNDLED, load_spec

    if not path.exists() and (BUNDLED / f"{path}.yaml").is_file():
        path = BUNDLED / f"{path}.yaml"  # a bundled spec by name: `fineflow ablate sample`
    try:
        spec = load_spec(path)
    except ValidationError as err:
        print(_describe_errors(err).replace("config", f"ablation spec {path}", 1), file=sys.stderr)
        return EXIT_USAGE
    except ValueError as err:
        print(f"fineflow ablate: {err}", file=sys.stderr)
        return EXIT_USAGE
    _quiet_prefect()
    start, root = time.monotonic(), spec.configs()[BASE].data_root

    def flow():
        from fineflow.flows.ablate import ablate

        return ablate

    result, code, _ = run_flow(root, flow, spec, debug, quiet)
    if code == EXIT_OK:
        print_ablation(result, root, time.monotonic() - start)
    return code


def print_ablation(result: Any, root: Path, seconds: float) -> None:
    from fineflow.tasks.ablation_report import HEAD, table_rows

    stages: dict[str, list[float]] = {}
    for line in result.lines:
        ran_cached_s = stages.setdefault(line.stage, [0, 0, 0.0])
        ran_cached_s[0] += line.ran
        ran_cached_s[1] += line.cached
        ran_cached_s[2] += line.seconds
    runs = sum(int(v[0] + v[1]) for v in stages.values())
    ran = sum(int(v[0]) for v in stages.values())
    print(f"\nfineflow ablate: {runs} task runs, {ran} ran, {runs - ran} cached, {seconds:.1f}s")
    print(f"{'stage':<16} {'ran':>4} {'cached':>6} {'seconds':>8}")
    for stage, (r, c, sec) in stages.items():
        print(f"{stage:<16} {int(r):>4} {int(c):>6} {sec:>8.1f}")
    report = json.loads(result.report.path(root, "report.json").read_text())
    rows = [HEAD, *table_rows(report)]
    keep = [0, 5, 6, 7, 8, 9, 10, 11]  # variant, dedup, tokens, epochs and the yardstick
    widths = [max(len(r[i]) for r in rows) for i in keep]
    print()
    for r in rows:
        cells = zip(keep, widths, strict=True)
        print("  ".join(r[i].ljust(w) if i == 0 else r[i].rjust(w) for i, w in cells))
    print(f"\nthe ablation, charts and all: {result.report.path(root, 'report.html').as_uri()}")


def server(stop: bool) -> int:
    """`fineflow server [--stop]`: the shared local Prefect server (fineflow.server) of
    this Prefect home: its address and pid, or stop it."""
    from fineflow.server import IDLE_ENV, configured, running, stop_all

    if stop:
        stopped = stop_all()
        for s in stopped:
            print(f"stopped the shared Prefect server at {s['api_url']} (pid {s['pid']})")
        if not stopped:
            print("no shared Prefect server was running")
        return 0
    found = running()
    for s in found:
        print(
            f"shared Prefect server at {s['api_url']} (pid {s['pid']}; stops after "
            f"{s['idle_s']:g} s without a run, {IDLE_ENV}; fineflow server --stop)"
        )
    if not found:
        print("no shared Prefect server is running; the next run starts one")
    if configured():
        print("runs use the configured PREFECT_API_URL, not a shared server")
    return 0


def show_report(cfg: PipelineConfig, open_it: bool) -> int:
    """Print the path of the config's report.html (found as `sample` finds the model);
    with --open, also hand it to a web browser."""
    from fineflow.sample import ModelDirError, stage_output

    try:
        report = stage_output(cfg, "report", "run report").path(cfg.data_root, "report.html")
    except ModelDirError as err:
        print(f"fineflow report: {err}", file=sys.stderr)
        return 2
    print(report)
    if open_it:
        import webbrowser

        if not webbrowser.open(report.as_uri()):
            print(f"fineflow report: no web browser found; open {report.as_uri()}", file=sys.stderr)
    return 0


def verify(cfg: PipelineConfig, repair: bool) -> int:
    """Rehash every artifact under the data root; name the damaged ones (exit 1 if any)."""
    from fineflow.storage.artifacts import verify_store

    checked, damaged = verify_store(cfg.data_root, repair)
    for where, why in damaged:
        print(f"damaged: {why}" if why.startswith(where) else f"damaged: {where}: {why}")
    verdict = "removed; the next run rebuilds them" if repair else "run with --repair to drop them"
    print(
        f"{checked} artifacts under {cfg.data_root} rehashed, {len(damaged)} damaged"
        + (f" ({verdict})" if damaged else "")
    )
    return 1 if damaged and not repair else 0


# Exit codes of `fineflow run` (README, "Bad input and exit codes").
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


def run(cfg: PipelineConfig, debug: bool = False, quiet: bool = False) -> int:
    """Run the pipeline; print the summary, or one block saying what failed and what to do.
    quiet: no progress lines (training steps, pages/s) in the terminal."""
    start = time.monotonic()

    def pipeline():
        from fineflow.flows.pipeline import pipeline  # Prefect: after the config is known good

        return pipeline

    result, code, log_file = run_flow(cfg.data_root, pipeline, cfg, debug, quiet)
    if code != EXIT_OK:
        return code
    print_summary(result, cfg, time.monotonic() - start)
    if result.failures:
        print(failed_warcs_block(result.failures, result.warcs, log_file))
        return EXIT_PARTIAL
    return EXIT_OK


def run_flow(
    root: Path, load: Any, parameter: Any, debug: bool, quiet: bool
) -> tuple[Any, int, Path]:
    """The flow `load()` imports, called on `parameter`, with the run's log file under
    `root` and a Prefect API (a temporary server unless one is configured): (its result,
    exit code, the log file). A failure prints one block saying what failed and what to do."""
    from fineflow import logs

    log_file = logs.setup(root, debug=debug, quiet=quiet)  # before Prefect is imported
    server = start_server()  # starts while this process imports Prefect
    try:
        flow = load()
        with prefect_api(server):
            return flow(parameter), EXIT_OK, log_file
    except KeyboardInterrupt:
        print(f"\nfineflow: interrupted; what finished stays cached. Log: {log_file}")
        return None, 130, log_file
    except Exception as exc:
        print(failure_block(exc, log_file, debug), file=sys.stderr)
        return None, EXIT_FAILED, log_file
    finally:
        if server is not None:  # stopped already unless the run never reached prefect_api
            server.stop()
        logs.forget(log_file)


def failure_block(exc: BaseException, log_file: Path, debug: bool) -> str:
    """The stage, the WARC, the reason in words and what to do; the traceback stays in the log."""
    import traceback

    from fineflow.flows.summary import explain

    reason, hint = explain(exc)
    lines = ["", "fineflow: the run failed"]
    for label, value in (
        ("stage", getattr(exc, "stage", None)),
        ("WARC", getattr(exc, "warc", None)),
        ("reason", reason),
        (
            "to do",
            hint or "see the log below; fix the cause and run again: what finished stays cached",
        ),
        ("log", f"{log_file} (full traceback; --debug prints it here)"),
    ):
        if value:
            lines.append(f"  {label + ':':<8} {value}")
    if debug:
        lines[1:1] = ["".join(traceback.format_exception(exc)).rstrip()]
    return "\n".join(lines)


def failed_warcs_block(failures, total: int, log_file: Path) -> str:
    lines = [f"\n{len(failures)} of {total} WARCs failed and were left out of the corpus:"]
    lines += [f"  {f.warc} ({f.stage}): {f.reason}" for f in failures]
    hints = sorted({f.hint for f in failures if f.hint})
    lines += [f"  to do: {h}" for h in hints]
    lines.append(
        "the next run retries only these (the rest stays cached); "
        f"fineflow status lists them; log: {log_file}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
