"""``harness models``: the shipped subjects (the trained weights cases load): list, verify, build (train once in
a real worker and ship), export (a shipped model as a megatron torch_dist checkpoint)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from harness.atomic import write_text_atomic
from harness.checks.subject_build import SUBJECT_FILE, build_case, recipe_of, split_name
from harness.exit_codes import EXIT_FAILED, EXIT_USAGE
from harness.launchers.local import LocalLauncher
from harness.models.subjects import HeadsName, SubjectError, manifest
from harness.provenance import provenance
from harness.records import Case, CaseOutcome
from harness.reports.measured import subjects_markdown


def add_parser(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser(
        "models", help="shipped subjects: the trained weights cases load (see README: Environments)"
    )
    models_sub = models.add_subparsers(dest="models_command", required=True)
    listing = models_sub.add_parser("list", help="every shipped subject with its sha256, size and recipe")
    listing.add_argument(
        "--markdown", type=Path, metavar="FILE", help="write the table to FILE instead (docs/measured/subjects.md)"
    )
    models_sub.add_parser("verify", help="check every shipped file against its manifest hash (exit 1 on a mismatch)")
    build = models_sub.add_parser(
        "build", help="train a subject under the pinned numerics, ship it, print its new hash"
    )
    build.add_argument("name", help="tiny-gpt-trained, or draft heads on it: tiny-gpt-trained+medusa-k2-t150")
    build.add_argument(
        "--artifacts", type=Path, default=Path("artifacts") / "build", help="worker logs and the built file"
    )
    export = models_sub.add_parser("export", help="write a shipped model as a megatron torch_dist checkpoint")
    export.add_argument("name", help="a model subject, e.g. tiny-gpt-trained")
    export.add_argument(
        "directory", type=Path, help="the checkpoint folder to write (a suite loads it with `torch_dist:`)"
    )
    export.add_argument("--artifacts", type=Path, default=Path("artifacts") / "build", help="worker logs")


def _in_worker(case: Case, artifacts: Path) -> CaseOutcome:
    launcher = LocalLauncher(artifacts)
    try:
        outcome = launcher.launch(case)
    finally:
        launcher.close()
    if outcome.error is not None:
        raise SubjectError(f"{case.id} failed:\n{outcome.error}")
    return outcome


def export(name: str, directory: Path, artifacts: Path) -> None:
    """The shipped model ``name`` as a megatron torch_dist checkpoint (what real users load with ``torch_dist:``)."""
    if HeadsName.parse(name):
        raise SubjectError(f"{name} is draft heads: export a model subject")
    manifest().verified_file(name)
    _in_worker(build_case(name, directory), artifacts)


def build(name: str, artifacts: Path, info: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """Train ``name`` in a fresh world-1 worker, ship its file and manifest entry; (sha256, metrics)."""
    spec, heads = split_name(name)
    shipped = manifest()
    requires = {spec.name: shipped.expected_hash(spec.name)} if heads else {}
    outcome = _in_worker(build_case(name), artifacts)
    keep = ("versions", "python", "cpu_model", "cpu_isa_flags", "cpu_pins", "environments", "commit", "date")
    info = {
        "kind": "draft-heads" if heads else "model",
        "recipe": recipe_of(name),
        "requires": requires,
        "built": {**{k: info[k] for k in keep if k in info}, **{k: round(v, 3) for k, v in outcome.metrics.items()}},
    }
    return shipped.record(name, Path(outcome.artifacts) / SUBJECT_FILE, info), outcome.metrics


def main(args: argparse.Namespace) -> int:
    shipped = manifest()
    try:
        if args.models_command == "build":
            digest, metrics = build(args.name, args.artifacts, provenance(Path.cwd()))
            print(f"{args.name}: sha256 {digest}")
            print(
                f"  {', '.join(f'{k} {v:g}' for k, v in sorted(metrics.items()))}; written to "
                f"{shipped.file(args.name)} and {shipped.path}"
            )
            print(
                "  baselines measured on the previous file no longer judge cases that use it: re-record them "
                "(--update-baselines)"
            )
            return 0
        if args.models_command == "export":
            export(args.name, args.directory, args.artifacts)
            print(f"{args.name}: torch_dist checkpoint written to {args.directory}")
            return 0
        if args.models_command == "list" and args.markdown is not None:
            write_text_atomic(args.markdown, subjects_markdown(shipped.entries()))
            print(f"written: {args.markdown}")
            return 0
        problems = shipped.problems()
    except SubjectError as err:
        print(f"harness: {err}", file=sys.stderr)
        return EXIT_USAGE
    for name, entry in sorted(shipped.entries().items()):
        state = "ok" if problems[name] is None else f"MISMATCH: {problems[name]}"
        if args.models_command == "list":
            state = f"{entry['bytes'] / 1e6:.1f} MB, {entry['kind']}, recipe {entry['recipe']}"
        print(f"{name}  sha256 {entry['sha256'][:16]}...  {state}")
    bad = [name for name, problem in problems.items() if problem is not None]
    if args.models_command == "verify":
        print(f"{len(problems) - len(bad)} of {len(problems)} subjects match {shipped.path}")
    return EXIT_FAILED if bad else 0
