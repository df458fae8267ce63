"""The nightly report's tables, built once from an ``Analysis`` and written two ways: Markdown for a
CI job summary (here) and a self-contained HTML page with trend plots (``harness.reports.html``)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.reports.history import number
from harness.reports.trends import Analysis, CaseStatus, changes_between, run_label, version_pair

SECTIONS = (
    ("new failure", "New failures"),
    ("still failing", "Still failing"),
    ("fixed?", "FIXED? Known defects that no longer show"),
    ("flaky", "Flaky"),
    ("fixed", "Fixed"),
    ("known defect", "Known defects (failing as declared)"),
    ("no baseline", "No baseline yet (not failures: `harness run --update-baselines` records them)"),
)


@dataclass(frozen=True)
class Table:
    title: str
    headers: tuple[str, ...]
    rows: list[tuple[str, ...]]
    note: str = ""


def _status_rows(statuses: list[CaseStatus]) -> list[tuple[str, ...]]:
    return [(s.key, s.verdict, run_label(s.since) if s.since else "-", str(s.flips), s.detail) for s in statuses]


def run_facts(analysis: Analysis) -> list[tuple[str, str]]:
    run = analysis.latest
    info = run.provenance
    facts = [
        ("run", run_label(run)),
        ("started", run.started),
        ("ended", run.ended or "interrupted / still running"),
        ("commit", info.get("commit") or "-"),
        ("python", info.get("python", "-")),
        ("host", f"{info.get('host', '-')} ({info.get('machine', '-')})"),
    ]
    facts += [(name, version) for name, version in sorted(info.get("versions", {}).items())]
    facts += [(name, str(info[name])) for name in ("driver", "cuda_driver", "gpus", "container") if name in info]
    first = analysis.runs[0]
    facts.append(("window", f"{len(analysis.runs)} run(s): #{first.id} ({first.started[:10]}) .. #{run.id}"))
    return facts


def tables(analysis: Analysis) -> list[Table]:
    found = [
        Table(
            "Verdicts of the latest run",
            ("verdict", "cases"),
            [(v, str(n)) for v, n in sorted(analysis.counts.items())],
        )
    ]
    heads = ("case", "verdict", "since", "flips", "detail")
    for status, title in SECTIONS:
        members = [s for s in analysis.cases if s.status == status]
        if members:
            found.append(Table(f"{title} ({len(members)})", heads, _status_rows(members)))
    if analysis.regressions:
        found.append(
            Table(
                "Top regressions by relative change against the baseline",
                ("case", "metric", "baseline", "measured", "change", "tolerance", "verdict"),
                [
                    (
                        r.key,
                        r.metric,
                        number(r.baseline),
                        number(r.measured),
                        f"{r.relative:+.3%}",
                        r.tolerance.describe(),
                        r.verdict,
                    )
                    for r in analysis.regressions
                ],
            )
        )
    settings = analysis.settings
    found.append(
        Table(
            f"Drifts ({len(analysis.drifts)})",
            ("case", "metric", "before", "now", "moved", "allowed", "baseline", "moved in", "what changed"),
            [
                (
                    d.key,
                    d.metric,
                    number(d.before),
                    number(d.after),
                    f"{d.after - d.before:+.6g}",
                    f"{d.allowed:.6g}",
                    number(d.baseline),
                    run_label(d.first),
                    d.changes,
                )
                for d in analysis.drifts
            ],
            note=f"the last {settings.drift_runs} run(s) all moved by more than the tolerance from the median of the "
            f"{settings.drift_window} run(s) before the move, whether or not still inside the baseline band",
        )
    )
    runs = analysis.runs
    found.append(
        Table(
            "Runs in the window",
            ("run", "versions", "what changed from the run before"),
            [
                (run_label(run), version_pair(run), changes_between(runs[i - 1] if i else None, run))
                for i, run in enumerate(runs)
            ],
        )
    )
    if analysis.versions is not None:
        found.append(
            Table(
                "Compatibility: verdicts of each suite's latest run under each version pair",
                ("suite", *analysis.versions.pairs),
                [(suite, *cells) for suite, cells in analysis.versions.compatibility.items()],
            )
        )
        found.append(
            Table(
                "The same cases across library versions (latest value under each)",
                ("case", "metric", *analysis.versions.pairs),
                [(key, name, *values) for key, name, values in analysis.versions.rows],
            )
        )
    return found


def sensitivity_table(report: dict) -> Table:
    """The mutation self-test's score (``harness sensitivity``'s JSON), per check and over all defects."""
    rows = [
        (check, str(s["defects"]), str(s["caught"]), str(s["portable"]), ", ".join(s["missed"]) or "-")
        for check, s in report["checks"].items()
    ]
    total = report["total"]
    rows.append(
        (
            "all defects",
            str(total["defects"]),
            str(total["caught"]),
            str(total["portable"]),
            ", ".join(total["missed"]) or "-",
        )
    )
    return Table(
        "Sensitivity: known library defects injected inside the workers",
        ("check", "defects", "caught", "caught portably", "missed"),
        rows,
        note="caught portably: by a metric judged with the across-machine noise bands, not only bit-exactly",
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(analysis: Analysis, extra: tuple[Table, ...] = ()) -> str:
    lines = ["# posttrain-harness nightly report", ""]
    lines += [f"- **{name}**: {_cell(value)}" for name, value in run_facts(analysis)]
    for table in (*tables(analysis), *extra):
        lines += ["", f"## {table.title}", ""] + ([f"_{table.note}_", ""] if table.note else [])
        if not table.rows:
            lines.append("none")
            continue
        lines.append("| " + " | ".join(table.headers) + " |")
        lines.append("|" + "---|" * len(table.headers))
        lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"
