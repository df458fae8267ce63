"""Entry points: ``nox -s cpu_suite`` (main job), ``nox -s tests``, ``nox -s gpu_suite``, ``nox -s lint``.

CPU sessions pin the CPU torch wheel before anything else: a bare ``torch`` requirement pulled in
by a dependency would otherwise download a multi-GB CUDA build. The GPU session runs inside an NGC
PyTorch container and reuses the image's torch (``--system-site-packages``), never reinstalling it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nox
from packaging.version import Version

sys.path.insert(0, str(Path(__file__).parent))  # harness.constraints, before any session installs it

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

CPU_TORCH = "torch==2.13.0"


def install_cpu(session: nox.Session) -> None:
    session.install(CPU_TORCH)
    session.install("-e", ".[test]")


@nox.session
def tests(session: nox.Session) -> None:
    """The harness's own tests plus the CPU cases of suites/ against recorded baselines, leaving the
    cases marked ``slow`` to cpu_suite and nightly (give your own ``-m`` to choose otherwise)."""
    install_cpu(session)
    # -m EXPR, -m=EXPR and -mEXPR all choose the markers (one -m wins in pytest: the last)
    chooses = any(arg.startswith("-m") for arg in session.posargs)
    session.run("pytest", *([] if chooses else ["-m", "not slow"]), *session.posargs)


@nox.session
def unit(session: nox.Session) -> None:
    """The inner loop: the harness's own tests that start no worker (seconds each)."""
    install_cpu(session)
    session.run("pytest", "tests/unit", *session.posargs)


@nox.session
def sensitivity(session: nox.Session) -> None:
    """The mutation self-test: every known library defect (harness/mutations/) injected inside the workers and
    run against the cases that must catch it; report under artifacts/sensitivity/ (`-- --fast`: CI's subset)."""
    install_cpu(session)
    session.run("harness", "sensitivity", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Regenerate docs/measured/ from what is recorded (tests fail while a generated page is stale)."""
    install_cpu(session)
    session.run("harness", "baselines", "--markdown", "docs/measured/baselines.md")
    session.run("harness", "models", "list", "--markdown", "docs/measured/subjects.md")


@nox.session
def cpu_suite(session: nox.Session) -> None:
    """All CPU cases of all suites (pass extra `harness run` options after --)."""
    install_cpu(session)
    session.run("harness", "run", "--platform", "cpu", *session.posargs)


# What a GPU session needs from the interpreter it will run the harness with (the image's own: GPU sessions
# create no venv), probed in that interpreter, one line per part.
_GPU_PROBE = """
import importlib.util
try:
    import torch
    print("gpus", torch.cuda.device_count() if torch.cuda.is_available() else 0)
except ImportError:
    print("missing torch")
if importlib.util.find_spec("transformer_engine") is None:
    print("missing transformer_engine")
"""
GPU_HOME = (
    "GPU sessions run inside an NGC PyTorch container on a GPU machine (docs/gpu.md): "
    "docker run --gpus all -v $PWD:$PWD -w $PWD nvcr.io/nvidia/pytorch:25.04-py3, then pip install nox; "
    "the image has torch with CUDA and Transformer Engine, which GPU cases build on"
)


def require_gpu(session: nox.Session) -> None:
    """Stop before installing anything where there is no GPU, no CUDA torch or no Transformer Engine in the
    interpreter the session runs (with `-- --allow-no-gpu` the session skips instead of failing)."""
    try:
        said = str(session.run("python", "-c", _GPU_PROBE, silent=True, external=True)).split("\n")
    except nox.command.CommandFailed:
        said = ["missing python"]
    missing = [line.split()[1] for line in said if line.startswith("missing ")]
    gpus = next((int(line.split()[1]) for line in said if line.startswith("gpus ")), 0)
    if gpus and not missing:
        return
    lacks = ", ".join(missing + ([] if gpus or "torch" in missing else ["a CUDA device"]))
    reason = f"{session.name}: this interpreter lacks {lacks}. {GPU_HOME}"
    if "--allow-no-gpu" in session.posargs:
        session.skip(reason)
    session.error(reason)


# GPU sessions use the image's interpreter: NGC images have no ensurepip for a venv, and their torch, Transformer
# Engine and constraint file are what the cases must run on.
@nox.session(venv_backend="none")
def gpu_suite(session: nox.Session) -> None:
    """All GPU cases, with the container's own torch."""
    require_gpu(session)
    install_in_image(session)
    session.run("harness", "run", "--platform", "gpu", *session.posargs)


GPU_SMOKE_DIR = "artifacts/gpu_smoke"


@nox.session(venv_backend="none")
def gpu_smoke(session: nox.Session) -> None:
    """The single command of a short GPU session: one representative GPU case of every check
    (harness/smoke.py), baselines recorded for this GPU's environment (baselines/gpu-<model>/), then
    the report (Markdown + HTML) and JUnit XML under artifacts/gpu_smoke/. Commit the baselines."""
    from harness.smoke import smoke_expression

    require_gpu(session)
    install_in_image(session)
    run_then_report(
        session,
        GPU_SMOKE_DIR,
        f"{GPU_SMOKE_DIR}/run",
        f"{GPU_SMOKE_DIR}/junit.xml",
        "--platform",
        "gpu",
        "-k",
        smoke_expression(),
        "--update-baselines",
    )


def install_in_image(session: nox.Session) -> None:
    """The harness over the image's own packages: first what the image's pip constraints say about the direct
    requirements, then pip's own dry run (which sees every transitive pin), then the install."""
    import os

    from harness.constraints import constraint_conflicts

    problems = constraint_conflicts(Path("pyproject.toml"))
    if problems:
        session.error(
            "the image's pip constraints (PIP_CONSTRAINT) exclude what the harness needs:\n" + "\n".join(problems)
        )
    pip = ("python", "-m", "pip", "install", "-e", ".")
    try:
        session.run(*pip[:4], "--dry-run", *pip[4:], silent=True, external=True)
    except nox.command.CommandFailed as failed:
        constraint = os.environ.get("PIP_CONSTRAINT", "(none set)")
        session.error(
            f"pip cannot resolve the harness against this image (PIP_CONSTRAINT={constraint}): {failed.reason}. "
            "docs/gpu.md, 'Constraints', says how to override a pin"
        )
    session.run(*pip, external=True)


NIGHTLY = "artifacts/nightly"
MATRIX = "artifacts/matrix"
# (megatron-core, nvidia-modelopt) pairs of the version matrix. pyproject pins the first (what CI and
# cpu_suite run); the others are installed over it. megatron-core >= 0.17 declares Python >= 3.12:
# on 3.11 it installs only with --no-deps --ignore-requires-python, plus triton, which it imports.
VERSION_MATRIX = [("0.16.1", "0.47.0"), ("0.19.2", "0.47.0"), ("0.16.1", "0.46.1")]


def run_then_report(
    session: nox.Session, folder: str, artifacts: str, junit: str, *run_args: str, report_args: tuple[str, ...] = ()
) -> None:
    """`harness run` appending to <folder>/history.sqlite, then `harness report` into <folder>/report,
    written even when cases fail (the session still fails then)."""
    try:
        session.run(
            "harness",
            "run",
            *run_args,
            "--artifacts",
            artifacts,
            "--history",
            f"{folder}/history.sqlite",
            "--junit",
            junit,
            *session.posargs,
        )
    finally:
        session.run(
            "harness", "report", "--history", f"{folder}/history.sqlite", "--out", f"{folder}/report", *report_args
        )


@nox.session
@nox.parametrize(("mcore", "modelopt"), VERSION_MATRIX)
def matrix(session: nox.Session, mcore: str, modelopt: str) -> None:
    """Every CPU case under one (megatron-core, modelopt) pair, appended to artifacts/matrix/history.sqlite,
    then the report, whose version table compares each case across the pairs run so far. `nox -s matrix`
    runs every pair; `nox -s "matrix(mcore='0.19.2', modelopt='0.47.0')"` one."""
    install_cpu(session)
    session.install("--no-deps", "--ignore-requires-python", f"megatron-core=={mcore}", f"nvidia-modelopt=={modelopt}")
    if Version(mcore) >= Version("0.17"):
        session.install("triton")
    tag = f"mcore{mcore}-modelopt{modelopt}"
    run_then_report(session, MATRIX, f"{MATRIX}/{tag}", f"{MATRIX}/{tag}.xml", "--platform", "cpu")


@nox.session(venv_params=["--system-site-packages"])
def nightly(session: nox.Session) -> None:
    """Every suite (GPU cases skip with a reason on a host without GPUs), appended to the history kept
    in artifacts/nightly/, then `harness report` (Markdown + HTML) and JUnit XML beside it. The report
    is written even when cases fail; the session still fails then. Extra `harness run` options after --."""
    try:
        session.run("python", "-c", "import torch", silent=True)  # an NGC container's own build: keep it
    except nox.command.CommandFailed:
        session.install(CPU_TORCH)
    install_in_image(session)
    # the mutation self-test first: its score goes into the report (a score below 90% fails the session at the end)
    try:
        session.run("harness", "sensitivity", "--artifacts", f"{NIGHTLY}/sensitivity")
        weak = False
    except nox.command.CommandFailed:
        weak = True
    run_then_report(
        session,
        NIGHTLY,
        f"{NIGHTLY}/run",
        f"{NIGHTLY}/junit.xml",
        "--benchmark-storage",
        f"{NIGHTLY}/benchmarks",
        report_args=("--sensitivity", f"{NIGHTLY}/sensitivity/sensitivity.json"),
    )
    if weak:
        session.error(
            "the mutation self-test caught fewer than 90% of its defects with a portable metric (see the report)"
        )


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "harness", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "harness", "tests", "noxfile.py")
