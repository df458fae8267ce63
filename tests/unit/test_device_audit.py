"""Device audit of the code that runs inside workers: every tensor it creates is put on the worker's
device (``device=`` or ``.to(...)``), so nothing on the GPU path hands a CPU tensor to an NCCL
collective or mixes devices in a forward. On CPU every tensor is on the CPU anyway, so a run cannot
show such a bug; reading the code can. A tensor that is meant to stay on the host is listed below
with why."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

WORKER_CODE = ("harness/runtime", "harness/checks", "harness/evals")
FACTORIES = {"empty", "zeros", "ones", "full", "tensor", "arange", "randint", "randn", "rand", "eye", "linspace"}
HOST_SIDE = {
    # whole (unsharded) tensors assembled on the host to be written as safetensors, never communicated
    ("harness/runtime/weights.py", "whole_tensors"),
}


def _function_of(tree: ast.Module) -> dict[ast.AST, str]:
    owner: dict[ast.AST, str] = {}
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if node is not fn:
                    owner.setdefault(node, fn.name)
    return owner


def unplaced_tensors(path: Path, relative: str | None = None) -> list[str]:
    """``file:line: torch.X(...)`` for each tensor factory call without a device."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    owner = _function_of(tree)
    relative = relative or str(path.relative_to(ROOT))
    found = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in FACTORIES
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch"
        ):
            continue
        if any(keyword.arg == "device" for keyword in node.keywords):
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.attr == "to":
            continue
        if (relative, owner.get(node, "")) in HOST_SIDE:
            continue
        found.append(
            f"{relative}:{node.lineno}: torch.{node.func.attr}(...) without device= in {owner.get(node, '<module>')}"
        )
    return found


def test_worker_code_places_every_tensor_it_creates() -> None:
    files = [
        p
        for entry in WORKER_CODE
        for p in ([ROOT / entry] if entry.endswith(".py") else sorted((ROOT / entry).rglob("*.py")))
    ]
    assert len(files) > 15
    problems = [line for path in files for line in unplaced_tensors(path)]
    assert problems == [], "\n".join(problems)


def test_the_audit_finds_a_host_tensor_handed_to_a_collective(tmp_path: Path) -> None:
    """The defect it exists for (a pipeline broadcast of ``torch.empty(n)``, NCCL refuses it)."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import torch\n\n\ndef losses(dist, group, n):\n    values = torch.empty(n, dtype=torch.float64)\n"
        "    dist.broadcast(values, src=0, group=group)\n    placed = torch.zeros(n).to('cuda')\n    return values, "
        "placed\n"
    )
    assert unplaced_tensors(sample, "sample.py") == ["sample.py:5: torch.empty(...) without device= in losses"]


def test_a_module_left_on_another_device_is_named() -> None:
    """What ``on_device`` checks after ``mtsp.convert``: here the "worker device" is meta, and the
    head a library created on the host is what stays behind."""
    import torch

    from harness.runtime.forward import off_device

    model = torch.nn.Sequential(torch.nn.Linear(2, 2, device="meta"), torch.nn.Linear(2, 2))
    model.register_buffer("scale", torch.ones(1, device="meta"))
    assert off_device(model, torch.device("meta")) == ["1.weight", "1.bias"]
    assert off_device(model.to("meta"), torch.device("meta")) == []
