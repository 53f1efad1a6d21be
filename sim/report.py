"""Reports: ``report.json`` (stable, byte for byte per scenario and seed) and ``report.md``."""

from __future__ import annotations

import json
import math
from typing import Any

from sim.network import GB
from sim.run import SystemResult
from sim.scenario import Scenario


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]


def _r(x: float) -> float:
    return round(x, 6)


def system_summary(r: SystemResult) -> dict[str, Any]:
    led = r.ledger
    cost_by_class = {c: _r(n / GB * led.prices.get(c, 0.0)) for c, n in sorted(led.by_class.items())}
    gossip = led.by_category.get("gossip", 0) + led.by_category.get("push_pull", 0)  # datagrams and push-pulls
    out: dict[str, Any] = {
        "wan_bytes": led.wan_bytes(),
        "lan_bytes": led.by_class.get("lan", 0),
        "cost_usd": _r(led.cost_usd()),
        "read_latency_p50_s": _r(percentile(r.read_latencies, 50)),
        "read_latency_p99_s": _r(percentile(r.read_latencies, 99)),
        "read_latency_mean_s": _r(sum(r.read_latencies) / len(r.read_latencies)) if r.read_latencies else 0.0,
        "commit_latency_p50_s": _r(percentile(r.commit_latencies, 50)),
        "commit_latency_p99_s": _r(percentile(r.commit_latencies, 99)),
        "reads_ok": len(r.read_latencies),
        "reads_failed": r.reads_failed,
        "reads_unfinished": r.reads_started - len(r.read_latencies) - r.reads_failed
        if r.reads_started >= len(r.read_latencies) + r.reads_failed else 0,
        "commits_ok": len(r.commit_latencies),
        "commits_failed": r.commits_failed,
        "bytes_by_link_class": dict(sorted(led.by_class.items())),
        "cost_usd_by_link_class": cost_by_class,
        "bytes_by_cluster_pair": dict(sorted(led.by_pair.items())),
        "bytes_by_category": dict(sorted(led.by_category.items())),
        "wan_bytes_by_category": dict(sorted(led.wan_by_category.items())),
        "gossip_bytes": gossip,
        "gossip_bytes_per_member_per_s": r.extra.get("membership", {}).get("bytes_per_member_per_s", 0.0),
        "gossip_wan_bytes": led.wan_by_category.get("gossip", 0) + led.wan_by_category.get("push_pull", 0),
        "messages": led.messages,
        "dropped": dict(sorted(led.dropped.items())),
        "counters": r.counters,
        "invariant_violations": r.violations,
        "events": r.events,
    }
    out.update(r.extra)
    return out


def _ratio(a: float, b: float) -> float | None:
    return _r(a / b) if b else None


def build_report(sc: Scenario, seed: int, results: list[SystemResult]) -> dict[str, Any]:
    systems = {r.name: system_summary(r) for r in results}
    comparison: dict[str, Any] = {}
    if "elton" in systems:
        e = systems["elton"]
        for other in sorted(systems):
            if other != "elton":
                o = systems[other]
                comparison[f"{other}_over_elton"] = {
                    "wan_bytes": _ratio(o["wan_bytes"], e["wan_bytes"]),
                    "cost_usd": _ratio(o["cost_usd"], e["cost_usd"]),
                    "read_latency_p50_s": _ratio(o["read_latency_p50_s"], e["read_latency_p50_s"]),
                }
    first = results[0] if results else None
    return {
        "scenario": {
            "name": sc.name,
            "seed": seed,
            "duration_s": sc.duration_s,
            "clusters": {c.name: {"hosts": c.hosts, "masters": c.masters} for c in sc.clusters},
            "operations": first.ops if first else 0,
            "host_events": first.host_events if first else 0,
            "chunk_size": sc.chunk_size,
        },
        "systems": systems,
        "comparison": comparison,
    }


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True) + "\n"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def report_markdown(report: dict[str, Any]) -> str:
    sc = report["scenario"]
    systems = report["systems"]
    names = list(systems)
    lines = [f"# Scenario `{sc['name']}` (seed {sc['seed']})", "",
             f"{len(sc['clusters'])} clusters, {sum(c['hosts'] for c in sc['clusters'].values())} hosts, "
             f"{sc['operations']} operations, {sc['host_events']} host failures/restarts, "
             f"{sc['duration_s']:g} simulated seconds.", ""]
    rows = [
        ("WAN bytes", lambda s: _fmt_bytes(s["wan_bytes"])),
        ("LAN bytes", lambda s: _fmt_bytes(s["lan_bytes"])),
        ("cost (USD)", lambda s: f"{s['cost_usd']:.4f}"),
        ("read latency p50 (s)", lambda s: f"{s['read_latency_p50_s']:.3f}"),
        ("read latency p99 (s)", lambda s: f"{s['read_latency_p99_s']:.3f}"),
        ("commit latency p50 (s)", lambda s: f"{s['commit_latency_p50_s']:.3f}"),
        ("commit latency p99 (s)", lambda s: f"{s['commit_latency_p99_s']:.3f}"),
        ("reads ok / failed", lambda s: f"{s['reads_ok']} / {s['reads_failed']}"),
        ("commits ok / failed", lambda s: f"{s['commits_ok']} / {s['commits_failed']}"),
        ("gossip bytes", lambda s: _fmt_bytes(s["gossip_bytes"])),
        ("gossip WAN bytes", lambda s: _fmt_bytes(s["gossip_wan_bytes"])),
        ("gossip B/member/s", lambda s: f"{s['gossip_bytes_per_member_per_s']:.1f}"),
        ("invariant violations", lambda s: str(len(s["invariant_violations"]))),
    ]
    lines.append("| | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for label, f in rows:
        lines.append(f"| {label} | " + " | ".join(f(systems[n]) for n in names) + " |")
    lines.append("")
    for key, title in (("bytes_by_link_class", "Bytes per link class"),
                       ("bytes_by_cluster_pair", "Bytes per cluster pair")):
        keys = sorted({k for n in names for k in systems[n][key]})
        lines += [f"## {title}", "", "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for k in keys:
            lines.append(f"| {k} | " + " | ".join(_fmt_bytes(systems[n][key].get(k, 0)) for n in names) + " |")
        lines.append("")
    if report["comparison"]:
        lines += ["## Elton against the baselines", ""]
        for k, v in report["comparison"].items():
            other = k.removesuffix("_over_elton")
            b = f"{v['wan_bytes']:.1f} times" if v["wan_bytes"] is not None else "n/a (Elton moved 0 WAN bytes)"
            c = f"{v['cost_usd']:.1f} times" if v["cost_usd"] is not None else "n/a (Elton cost 0)"
            lines.append(f"- {other} moved {b} the WAN bytes of Elton and spent {c} its dollars.")
        lines.append("")
    cores = systems.get("elton", {}).get("cores")
    if cores:
        lines += ["## What drives the Elton system", ""]
        lines += [f"- {k}: {v}" for k, v in sorted(cores.items())]
        lines.append("")
    viol = [(n, v) for n in names for v in systems[n]["invariant_violations"]]
    if viol:
        lines += ["## Invariant violations", ""] + [f"- {n}: {v}" for n, v in viol] + [""]
    return "\n".join(lines)


def gossip_report(sc: Scenario, seed: int, study: dict[str, Any]) -> dict[str, Any]:
    """``report.json`` of a membership study (``sim.gossip``)."""
    return {"scenario": {"name": sc.name, "seed": seed, "duration_s": sc.duration_s,
                         "clusters": {c.name: {"hosts": c.hosts, "masters": c.masters} for c in sc.clusters}},
            "gossip": study}


def _s(x: float | None) -> str:
    return "not reached" if x is None else f"{x:.3f} s"


def gossip_markdown(report: dict[str, Any]) -> str:
    sc, g = report["scenario"], report["gossip"]
    q = f"{g['quantile'] * 100:g}%"
    b, m, cfg = g["bytes"], g["model"], g["config"]
    lines = [f"# Scenario `{sc['name']}` (seed {sc['seed']}): membership", "",
             f"{g['masters']} masters in {g['clusters']} cluster(s), the real `mesh.core.membership` cores "
             f"(profile `{g['profile']}`: gossip every {cfg['gossip_interval_s']:g} s to {cfg['gossip_nodes']}, "
             f"probe every {cfg['probe_interval_s']:g} s, push-pull every {cfg['push_pull_interval_s']:g} s), "
             f"{g['simulated_s']:g} simulated seconds.", "", "## Time for a change to reach " + q + " of masters", ""]
    kill = g["changes"].get("kill")
    if kill:
        lines += [f"A master ({kill['host']}) is killed at {kill['at_s']:g} s (no leave message):", "",
                  f"- first suspicion: {_s(kill['first_suspect_after_s'])} after the kill; the suspicion reached "
                  f"{q} in {_s(kill['suspicion_to_quantile_s'])}",
                  f"- first declared dead: {_s(kill['first_dead_after_s'])} after the kill; 'dead' reached {q} "
                  f"in {_s(kill['dead_to_quantile_s'])} ({kill['dead_reached']} of {kill['observers']})",
                  f"- kill to {q} of masters seeing it dead: {_s(kill['kill_to_quantile_dead_s'])}", ""]
    join = g["changes"].get("join")
    if join:
        lines += [f"A master ({join['host']}) joins at {join['at_s']:g} s through a push-pull with one master: "
                  f"{q} of masters ({join['reached']} of {join['observers']}) knew it after "
                  f"{_s(join['join_to_quantile_s'])}.", ""]
    serf = m["serf_published"]
    lines += ["## Against the SWIM/Serf model", "",
              f"- Serf's published figure: {serf['seconds']:g} s to reach {serf['quantile'] * 100:g}% of "
              f"{serf['nodes']} nodes (gossip every {serf['gossip_interval_s']:g} s, fan-out {serf['fanout']})",
              f"- mean-field push epidemic at {g['masters']} masters with this profile: {m['mean_field_push_s']:.3f} s",
              "- measured here: the spread of one update (suspicion, 'dead', or a join) above", "",
              "## Gossip bytes per master per second (sent)", "",
              "| | B/master/s |", "|---|---|",
              f"| datagrams, steady state (no change under way) | {b['quiet_datagram_bytes_per_master_per_s']} |",
              f"| datagrams, whole run | {b['datagram_bytes_per_master_per_s']} |",
              f"| push-pull, whole run ({b['push_pulls']} started) | {b['push_pull_bytes_per_master_per_s']} |",
              f"| push-pull, steady (one per master per interval, measured size) | "
              f"{b['steady_push_pull_bytes_per_master_per_s']} |", ""]
    return "\n".join(lines)
