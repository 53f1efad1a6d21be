"""PNG plots (matplotlib, Agg): traffic over time per host, cost bars, latency distributions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sim.run import SystemResult  # noqa: E402

MAX_SERIES = 12
PNG_META = {"Software": None}


def traffic_plot(result: SystemResult, duration_s: float, path: Path) -> None:
    """Bytes per second sent plus received by each host (or cluster, on large runs) over time."""
    led = result.ledger
    b = led.bucket_s
    n = int(duration_s // b) + 1
    totals = sorted(led.series, key=lambda w: (-sum(led.series[w].values()), w))[:MAX_SERIES]
    fig, ax = plt.subplots(figsize=(9, 4))
    for who in sorted(totals):
        s = led.series[who]
        ax.plot([k * b for k in range(n)], [s.get(k, 0.0) / b / 2**20 for k in range(n)],
                label=who, drawstyle="steps-post")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("traffic (MiB/s, sent + received)")
    ax.set_title(f"{result.name}: traffic over time")
    if totals:
        ax.legend(fontsize="small", loc="upper right")
    fig.tight_layout()
    fig.savefig(path, metadata=PNG_META)
    plt.close(fig)


def cost_plot(report: dict[str, Any], path: Path) -> None:
    systems = report["systems"]
    names = list(systems)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.bar(names, [systems[n]["cost_usd"] for n in names], color="tab:blue")
    a1.set_ylabel("cost (USD)")
    a2.bar(names, [systems[n]["wan_bytes"] / 2**30 for n in names], color="tab:orange")
    a2.set_ylabel("WAN traffic (GiB)")
    fig.suptitle(f"{report['scenario']['name']}: cost and WAN bytes")
    fig.tight_layout()
    fig.savefig(path, metadata=PNG_META)
    plt.close(fig)


def latency_plot(results: list[SystemResult], path: Path) -> None:
    """Empirical CDF of read latency per system."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        xs = sorted(r.read_latencies)
        if xs:
            ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=r.name)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("read latency (s)")
    ax.set_ylabel("fraction of reads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, metadata=PNG_META)
    plt.close(fig)


def sweep_plot(param: str, values: list[str], reports: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(reports[0]["systems"]) if reports else []
    for n in names:
        ax.plot(values, [r["systems"][n]["cost_usd"] for r in reports], marker="o", label=n)
    ax.set_xlabel(param)
    ax.set_ylabel("cost (USD)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, metadata=PNG_META)
    plt.close(fig)


def write_plots(report: dict[str, Any], results: list[SystemResult], duration_s: float, out: Path) -> list[Path]:
    paths = []
    for r in results:
        p = out / f"traffic-{r.name}.png"
        traffic_plot(r, duration_s, p)
        paths.append(p)
    cost_plot(report, out / "cost.png")
    latency_plot(results, out / "read-latency.png")
    return paths + [out / "cost.png", out / "read-latency.png"]
