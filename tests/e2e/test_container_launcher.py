"""``harness run --launcher container`` with a CPU image built here offline (Debian base from
debootstrap, the harness wheel of this checkout and CPU wheels): a TP=2 case runs inside the image,
its ranks started by torchrun, and matches the local launcher exactly; an unknown image is refused
before anything starts."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.cli import EXIT_USAGE, main
from tests.conftest import ROOT, TP2_CASES, measured_cases

pytestmark = pytest.mark.e2e
REQUIRED = bool(os.environ.get("HARNESS_REQUIRE_CONTAINER"))
IMAGE_INPUTS = ("harness/**/*.py", "pyproject.toml", "containers/Containerfile.cpu", "containers/build-cpu-image.sh")


def source_tag() -> str:
    """The image is rebuilt whenever what it installs changes."""
    digest = hashlib.sha256()
    for path in sorted({p for pattern in IMAGE_INPUTS for p in ROOT.glob(pattern)}):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return f"localhost/posttrain-harness:cpu-{digest.hexdigest()[:12]}"


@pytest.fixture(scope="module")
def image() -> str:
    why = (
        "podman not installed (apt-get install podman runc)"
        if shutil.which("podman") is None
        else "debootstrap not installed"
        if shutil.which("debootstrap") is None
        else "building the base image needs root (debootstrap)"
        if os.geteuid() != 0
        else None
    )
    if why:
        assert not REQUIRED, f"HARNESS_REQUIRE_CONTAINER is set but {why}"
        pytest.skip(why)
    tag = source_tag()
    if subprocess.run(["podman", "image", "inspect", tag], capture_output=True, check=False).returncode != 0:
        built = subprocess.run(
            [str(ROOT / "containers" / "build-cpu-image.sh"), tag],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return tag


def test_tp2_cases_inside_the_image_match_the_local_launcher(
    image: str, local_tp2: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inside = tmp_path / "container"
    assert (
        main(
            [
                "run",
                str(ROOT / "suites" / "ckpt.yaml"),
                "--platform",
                "cpu",
                "-k",
                TP2_CASES,
                "--launcher",
                "container",
                "--image",
                image,
                "--artifacts",
                str(inside),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    found = measured_cases(inside / "results.json")
    assert len(found) == 2 and {verdict for verdict, _ in found.values()} == {"pass"}
    assert found == local_tp2
    # one container ran both cases, from the image's installed harness, its ranks started by torchrun
    (folder,) = (inside / "_jobs").iterdir()
    submitted = (folder / "submit.txt").read_text()
    assert f" {image} python -m torch.distributed.run --standalone --nnodes=1 --nproc-per-node=2 " in submitted
    assert "container job harness-container-cpu-w2-1" in out
    log = (folder / "job.log").read_text()
    assert "harness /opt/venv/lib/python3.11/site-packages/harness)" in log  # the image's own install
    assert "[harness] rank 1 ends ckpt/tiny-gpt/tp2pp1/int4_awq[cpu]" in log


def test_an_unknown_image_is_refused_before_anything_starts(
    image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "run",
            str(ROOT / "suites" / "ckpt.yaml"),
            "-k",
            TP2_CASES,
            "--launcher",
            "container",
            "--image",
            "localhost/no-such:image",
            "--artifacts",
            str(tmp_path / "a"),
        ]
    )
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--image localhost/no-such:image: not usable with" in err and "pull or build it first" in err
    assert not (tmp_path / "a").exists()
