"""The parallel layout axes end to end: expert, sequence and virtual pipeline layouts give TP1's logits
(real workers, weights saved whole at TP1 and loaded under each layout)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.launchers.local import free_port
from tests.conftest import ROOT

_SAME_LOGITS = """
import json, os, sys
from pathlib import Path
import torch.distributed as dist
from harness.runtime.cpu_compat import apply_cpu_adaptations
rank, port, model, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
apply_cpu_adaptations()
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + port, rank=rank, world_size=2)
from harness.models.zoo import ZOO
from harness.runtime.megatron import build_gpt
from harness.records import Layout
from harness.runtime.distributed import model_parallel
from harness.runtime.forward import fixed_tokens, forward_logits
from harness.runtime.weights import load_whole, save_whole, whole_tensors
spec, whole = ZOO[model], folder / "whole.safetensors"
with model_parallel(Layout(1, 1), 1234):
    tp1 = build_gpt(spec, seed=1234)
    tokens = fixed_tokens(2, 16, spec.vocab_size, 7)
    reference = forward_logits(tp1, tokens, spec.vocab_size)
    if rank == 0:
        save_whole(whole_tensors(tp1), whole, {})
    dist.barrier()
diffs = {}
dense = [Layout(2, 1), Layout(2, 1, sp=True), Layout(1, 2, vpp=2)]
for layout in [Layout(1, 1, ep=2), Layout(2, 1), Layout(2, 1, sp=True)] if spec.num_moe_experts else dense:
    with model_parallel(layout, 1234):
        other = build_gpt(spec, seed=99)  # other random weights: only the loaded ones can match
        load_whole(other, whole)
        diffs[layout.token] = float((forward_logits(other, tokens, spec.vocab_size) - reference).abs().max())
if rank == 0:
    print(json.dumps(diffs))
"""


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("model", "layouts"),
    [("tiny-moe", ["tp1pp1ep2", "tp2pp1", "tp2pp1sp"]), ("tiny-gpt", ["tp2pp1", "tp2pp1sp", "tp1pp2vpp2"])],
)
def test_expert_sequence_and_virtual_pipeline_layouts_give_tp1s_logits(
    model: str, layouts: list[str], tmp_path: Path
) -> None:
    import json
    import subprocess
    import sys

    root, port = ROOT, str(free_port())
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", _SAME_LOGITS, str(rank), port, model, str(tmp_path)],
            cwd=root,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for rank in (0, 1)
    ]
    outputs = [rank.communicate(timeout=600) for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), "\n".join(err[-3000:] for _, err in outputs)
    diffs = json.loads(outputs[0][0].strip().splitlines()[-1])
    print(diffs)
    assert sorted(diffs) == sorted(layouts)
    assert all(diff < 1e-5 for diff in diffs.values()), diffs  # fp32 reduction order; measured 5e-7..7e-7
