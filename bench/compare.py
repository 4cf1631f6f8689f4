"""`bench/load.py --compare COMMIT`: the same scenarios against COMMIT (the baseline) and this checkout,
in turn, each run against a fresh stack whose service is started from that side's own checkout and venv.

The baseline checkout is --baseline-dir DIR (an existing checkout with its .venv), or a detached git
worktree of COMMIT in .bench-baseline/<sha> (ignored by git) with its own venv made by that checkout's
scripts/bootstrap, made on the first run and reused after. Every scenario runs --rounds times on each
side, the two sides alternating and swapping who goes first each round, so that a machine getting
slower or faster during the run weighs on both alike. Open-loop rates are half the BASELINE's median
closed-loop req/s of the same route (or --rate), the same for both sides. Prints one table (the median
of each side, current / baseline, and that ratio round by round, which shows the noise) and writes
bench/results/compare-<time>.json with every run's figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import ROOT, machine, write_results
from load import OPEN_ROUTES, WRK_TIMEOUT, open_rate, run_scenario, units
from stack import running

SIDES = ("baseline", "current")
# The metrics shown per kind of run (load.run_scenario); the JSON keeps all of them.
METRICS = {
    "closed": ["rps", "p50_ms", "p99_ms", "errors", "cpu_percent", "cpu_ms_per_req", "rss_mb"],
    "one": ["mean_ms", "p50_ms", "p99_ms", "rps", "errors", "cpu_percent", "rss_mb"],
    "open": ["offered_rps", "rps", "p50_ms", "p99_ms", "p999_ms", "errors", "cpu_percent", "rss_mb"],
    "fanout": ["rps", "p50_ms", "p99_ms", "p999_ms", "lost", "duplicated", "cpu_percent", "rss_mb"],
}


@dataclass(frozen=True)
class Side:
    name: str
    commit: str  # short sha, "+changes" when the service's code (src/, pyproject.toml) has uncommitted ones
    checkout: Path
    python: str
    packages: dict[str, str]  # its venv's, but the service's own: a difference there is part of the comparison


def git(*argv: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *argv], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def describe(name: str, checkout: Path, python: str) -> Side:
    """A side, after checking that its Python imports the service from its own checkout."""
    where = subprocess.run(
        [python, "-c", "import elevenlabs_agent; print(elevenlabs_agent.__file__)"],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(where).resolve().is_relative_to(checkout.resolve()):
        raise SystemExit(f"{name}: {python} imports the service from {where}, not from {checkout}")
    commit = git("rev-parse", "--short", "HEAD", cwd=checkout)
    if git("status", "--porcelain", "--untracked-files=no", "--", "src", "pyproject.toml", cwd=checkout):
        commit += "+changes"
    freeze = [python, "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check"]
    lines = subprocess.run(freeze, capture_output=True, text=True, check=True).stdout.splitlines()
    packages = dict(line.split("==", 1) for line in lines if "==" in line)
    return Side(name, commit, checkout, python, packages)


def package_differences(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """`name a-version -> b-version` for every package whose version differs (or is missing: -)."""
    return [f"{n} {a.get(n, '-')} -> {b.get(n, '-')}" for n in sorted(a.keys() | b.keys()) if a.get(n) != b.get(n)]


def baseline_side(args: argparse.Namespace) -> Side:
    if args.baseline_dir:
        checkout = Path(args.baseline_dir).resolve()
        if args.compare and git("rev-parse", "HEAD", cwd=checkout) != git("rev-parse", f"{args.compare}^{{commit}}"):
            raise SystemExit(f"--baseline-dir {checkout} is not at {args.compare}")
    else:
        sha = git("rev-parse", "--verify", f"{args.compare}^{{commit}}")
        checkout = ROOT / ".bench-baseline" / sha
        if not (checkout / ".git").exists():
            git("worktree", "prune")  # a .bench-baseline/<sha> deleted by hand leaves its registration
            git("worktree", "add", "--detach", str(checkout), sha)
        subprocess.run([str(checkout / "scripts" / "bootstrap")], cwd=checkout, check=True)  # quick if done
    python = checkout / ".venv" / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{checkout} has no .venv (run its scripts/bootstrap)")
    return describe("baseline", checkout, str(python))


def with_derived(figures: dict[str, Any]) -> dict[str, Any]:
    """cpu_ms_per_req: the service's CPU per request, the figure that a faster machine changes least."""
    if figures.get("cpu_percent") is not None and figures.get("rps"):
        return figures | {"cpu_ms_per_req": round(figures["cpu_percent"] * 10 / figures["rps"], 3)}
    return figures


def ratio(baseline: float | None, current: float | None) -> float | None:
    return None if not baseline or current is None else round(current / baseline, 3)


def summarise(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per scenario and metric: each side's median over the rounds, current / baseline of the
    medians, and of each round's pair (round i of the current over round i of the baseline)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for label, sides in runs.items():
        figures = {side: [with_derived(f) for f in sides[side]] for side in SIDES}
        kind = figures["baseline"][0].get("kind", "closed")
        out[label] = {}
        for metric in METRICS[kind]:
            values = {side: [f.get(metric) for f in figures[side]] for side in SIDES}
            medians = {side: median(values[side]) for side in SIDES}
            out[label][metric] = medians | {
                "ratio": ratio(medians["baseline"], medians["current"]),
                "round_ratios": [ratio(b, c) for b, c in zip(values["baseline"], values["current"], strict=False)],
            }
    return out


def median(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def ratio_cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(summary: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    lines = [f"{'scenario':<32}{'metric':<16}{'baseline':>10}{'current':>10}{'ratio':>8}  ratio by round"]
    for label, metrics in summary.items():
        for i, (metric, m) in enumerate(metrics.items()):
            by_round = " ".join(ratio_cell(r) for r in m["round_ratios"])
            name = label if i == 0 else ""
            lines.append(
                f"{name:<32}{metric:<16}{cell(m['baseline']):>10}{cell(m['current']):>10}{ratio_cell(m['ratio']):>8}"
                f"  {by_round}"
            )
    return lines


def warnings(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> list[str]:
    out = []
    for label, sides in runs.items():
        for side in SIDES:
            for i, f in enumerate(sides[side], 1):
                where = f"{label}, {side} round {i}"
                if f.get("service_exited_early") is not None:
                    out.append(f"{where}: THE SERVICE EXITED DURING THE RUN: its figures are void")
                if f.get("seeded_tasks_exhausted"):
                    out.append(f"{where}: ran out of seeded callback tasks; raise SEED_PER_SECOND")
                if f.get("seeded_tasks_completed") is False:
                    out.append(f"{where}: its callbacks did not complete the seeded tasks")
                if f.get("error_kinds"):
                    out.append(f"{where}: errors: {f['error_kinds']}")
                if f.get("failed"):
                    out.append(f"{where}: FAILED: {f['failed']}")
    return out


def main(args: argparse.Namespace, wrk: str) -> None:
    sides = {"baseline": baseline_side(args), "current": describe("current", ROOT, sys.executable)}
    print(f"baseline {sides['baseline'].commit} ({sides['baseline'].checkout}), current {sides['current'].commit}")
    packages = package_differences(sides["baseline"].packages, sides["current"].packages)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    rates = dict.fromkeys(OPEN_ROUTES, float(args.rate)) if args.rate else {}
    for unit in units(args.scenarios):
        for r in range(args.rounds):
            for name in SIDES if r % 2 == 0 else SIDES[::-1]:
                side = sides[name]
                load = os.getloadavg()[0]  # other work on the machine: the noise of this run
                with running(args, side.checkout, side.python) as s:
                    label, figures = run_scenario(unit, s, args, wrk, rates)
                    figures["service_exited_early"] = s.service_exit()
                figures["load_average"] = [round(load, 2), round(os.getloadavg()[0], 2)]
                runs.setdefault(label, {"baseline": [], "current": []})[name].append(figures)
                print(f"  {label}, round {r + 1}, {name}: {figures['rps']} req/s, p99 {figures['p99_ms']} ms")
        if unit in OPEN_ROUTES and unit not in rates:
            rates[unit] = open_rate(median([f["rps"] for f in runs[label]["baseline"]]) or 0, args)
    summary = summarise(runs)
    report = {
        "benchmark": "compare",
        "sides": {name: asdict(side) | {"checkout": str(side.checkout)} for name, side in sides.items()},
        "rounds": args.rounds,
        "wrk": f"-t{args.threads} -c{args.connections} -d{args.duration}s --timeout {WRK_TIMEOUT}",
        "duration": args.duration,
        "workers": args.workers,
        "open_loop_rates": rates,
        "package_differences": packages,
        "summary": summary,
        "runs": runs,
        "machine": machine(),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out = write_results("compare", report)
    print(
        f"\nbaseline {sides['baseline'].commit} vs current {sides['current'].commit}: median of {args.rounds} "
        f"rounds each, {args.duration} s per run, wrk -t{args.threads} -c{args.connections}, WORKERS="
        f"{args.workers or 'default'}, Redis appendfsync always; ratio = current / baseline (req/s: higher is "
        "better; latency, CPU, RSS: lower is better)"
    )
    print("\n".join(table(summary)))
    print("\n".join(warnings(runs)))
    if packages:
        print(f"the two venvs differ (baseline -> current): {', '.join(packages)}")
    loads = [x for sides_ in runs.values() for fs in sides_.values() for f in fs for x in f["load_average"]]
    print(f"machine: {os.cpu_count()} CPUs, 1-minute load average over the runs {min(loads)}-{max(loads)}")
    if max(loads) > (os.cpu_count() or 1):
        print("  (other work competed for the CPUs: compare the ratio by round; a wide spread is that noise)")
    print(f"written: {out.relative_to(ROOT)}")
