"""elton-sim: run scenarios, sweeps and fuzzing of the deterministic WAN simulator."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from mesh.errors import EltonError
from sim.fuzz import fuzz_one, replay_command
from sim.report import build_report, gossip_markdown, gossip_report, report_json, report_markdown
from sim.run import run_scenario, system_classes
from sim.scenario import Scenario, load_scenario, shipped_scenarios


def _progress(total_s: float, systems: list[str]):  # type: ignore[no-untyped-def]
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                        TimeElapsedColumn(), transient=True, disable=not sys.stderr.isatty())
    tasks = {n: progress.add_task(n, total=total_s) for n in systems}

    def update(name: str, t: float) -> None:
        progress.update(tasks[name], completed=t)

    return progress, update


def run_to_dir(scenario: str, seed: int, out: Path, sets: tuple[str, ...], systems: list[str],
               plots: bool = True) -> dict:
    sc = load_scenario(scenario, sets)
    if sc.gossip is not None:
        return gossip_to_dir(sc, seed, out)
    progress, update = _progress(sc.duration_s, systems)
    wall0 = time.perf_counter()
    with progress:
        results = run_scenario(sc, seed, systems, on_progress=update)
    wall = time.perf_counter() - wall0
    report = build_report(sc, seed, results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(report_json(report))
    (out / "report.md").write_text(report_markdown(report))
    timing = {"wall_s": round(wall, 3), "simulated_s_per_wall_s": round(sc.duration_s * len(results) / wall, 1),
              "events": sum(r.events for r in results)}
    (out / "timing.json").write_text(json.dumps(timing, indent=2, sort_keys=True) + "\n")
    if plots:
        from sim.plots import write_plots

        write_plots(report, results, sc.duration_s, out)
    return {"report": report, "timing": timing}


def gossip_to_dir(sc: Scenario, seed: int, out: Path) -> dict:
    """Run a membership study (a scenario with a [gossip] table) and write its report."""
    from sim.gossip import run_gossip

    progress, update = _progress(sc.duration_s, ["gossip"])
    wall0 = time.perf_counter()
    with progress:
        study = run_gossip(sc, seed, on_progress=lambda t: update("gossip", t))
    wall = time.perf_counter() - wall0
    report = gossip_report(sc, seed, study)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(report_json(report))
    (out / "report.md").write_text(gossip_markdown(report))
    timing = {"wall_s": round(wall, 3), "simulated_s_per_wall_s": round(sc.duration_s / wall, 3),
              "events": study["events"]}
    (out / "timing.json").write_text(json.dumps(timing, indent=2, sort_keys=True) + "\n")
    return {"report": report, "timing": timing}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """A deterministic WAN simulator: Elton against an NFS-like server and eager geo-replication."""


@cli.command("list")
def list_cmd() -> None:
    """Show the shipped scenarios."""
    for name, desc in shipped_scenarios().items():
        click.echo(f"{name:15} {desc}")


@cli.command()
@click.argument("scenario")
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--out", "out", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="output directory (default: sim-out/SCENARIO-SEED)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a scenario field (dotted key)")
@click.option("--systems", default="elton,nfs,georep", show_default=True)
@click.option("--no-plots", is_flag=True)
def run(scenario: str, seed: int, out: Path | None, sets: tuple[str, ...], systems: str, no_plots: bool) -> None:
    """Run SCENARIO (a shipped name or a TOML path) and write report.json, report.md and plots."""
    names = _systems(systems)
    out = out or Path("sim-out") / f"{Path(scenario).stem}-{seed}"
    res = run_to_dir(scenario, seed, out, sets, names, plots=not no_plots)
    if "gossip" in res["report"]:
        click.echo((out / "report.md").read_text())
        click.echo(f"{res['timing']['simulated_s_per_wall_s']} simulated s per wall s; wrote {out}/")
        return
    s = res["report"]["systems"]
    for n in names:
        click.echo(f"{n:7} WAN {s[n]['wan_bytes'] / 2**20:12.1f} MiB  ${s[n]['cost_usd']:.4f}  "
                   f"read p50 {s[n]['read_latency_p50_s']:.3f}s p99 {s[n]['read_latency_p99_s']:.3f}s  "
                   f"violations {len(s[n]['invariant_violations'])}")
    click.echo(f"{res['timing']['simulated_s_per_wall_s']} simulated s per wall s; wrote {out}/")


@cli.command()
@click.argument("scenario")
@click.option("--param", required=True, help="dotted scenario key, e.g. links.0.bandwidth_mbps")
@click.option("--values", required=True, help="comma-separated values")
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--out", "out", default=None, type=click.Path(file_okay=False, path_type=Path))
@click.option("--systems", default="elton,nfs,georep", show_default=True)
def sweep(scenario: str, param: str, values: str, seed: int, out: Path | None, systems: str) -> None:
    """Run SCENARIO once per value of PARAM and plot cost against it."""
    names = _systems(systems)
    out = out or Path("sim-out") / f"sweep-{Path(scenario).stem}-{param}"
    vals = [v.strip() for v in values.split(",") if v.strip()]
    reports = []
    for v in vals:
        res = run_to_dir(scenario, seed, out / f"{param}={v}", (f"{param}={v}",), names, plots=False)
        reports.append(res["report"])
        click.echo(f"{param}={v}: " + "  ".join(f"{n} ${res['report']['systems'][n]['cost_usd']:.4f}"
                                                 for n in names))
    from sim.plots import sweep_plot

    sweep_plot(param, vals, reports, out / "sweep-cost.png")
    summary = {v: {n: r["systems"][n]["cost_usd"] for n in names} for v, r in zip(vals, reports, strict=True)}
    (out / "sweep.json").write_text(json.dumps({"param": param, "cost_usd": summary}, indent=2) + "\n")
    click.echo(f"wrote {out}/")


@cli.command()
@click.option("--runs", default=100, show_default=True, type=int)
@click.option("--scenario", default="churn", show_default=True)
@click.option("--first-seed", default=1, show_default=True, type=int)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE")
def fuzz(runs: int, scenario: str, first_seed: int, sets: tuple[str, ...]) -> None:
    """Run RUNS seeds with random faults; print every failing seed with a command that replays it."""
    failures = 0
    for seed in range(first_seed, first_seed + runs):
        violations = fuzz_one(scenario, seed, sets)
        if violations:
            failures += 1
            click.echo(f"seed {seed} FAILED: {violations[0]}")
            click.echo(f"  replay: {replay_command(scenario, seed, sets)}")
    click.echo(f"{runs} runs, {failures} failing")
    if failures:
        raise SystemExit(1)


def _systems(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in system_classes()]
    if bad or not names:
        raise click.BadParameter(f"unknown system(s) {bad}; choose from {', '.join(system_classes())}")
    return names


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="elton-sim", standalone_mode=False)
    except EltonError as exc:
        click.echo(f"elton-sim: {exc.message}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        return 130
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
