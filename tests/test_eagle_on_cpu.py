"""modelopt's Megatron EAGLE on CPU: where its Transformer Engine stand-ins apply, and the MTP defect the
harness works around (``drafts._reuse_base_config``), shown on the installed modelopt in a real rank."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.launchers.local import free_port
from harness.runtime import drafts

ROOT = Path(__file__).resolve().parent.parent

# One gloo rank: the tiny GPT converted by mtsp.convert with EAGLE_MTP's config, without and with the workaround.
_CONVERT_MTP = """
import json, sys, torch.distributed as dist
from harness.runtime.cpu_compat import apply_cpu_adaptations
applied = apply_cpu_adaptations()
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[1], rank=0, world_size=1)
import modelopt.torch.speculative as mtsp
from harness.models.zoo import ZOO
from harness.records import Layout
from harness.runtime.distributed import model_parallel
from harness.runtime.drafts import ALGORITHMS
from harness.runtime.speculative import with_drafts
from harness.runtime.subject import build_model
spec, mtp = ZOO["tiny-gpt"], ALGORITHMS["eagle_mtp"]
with model_parallel(Layout(1, 1), 1234):
    try:
        mtsp.convert(build_model(spec, seed=1234), mtp.modes(2, spec))
        unpatched = "converted"
    except AttributeError as err:
        unpatched = str(err)
    model = with_drafts(spec, mtp, 2, 1234).eval()
    import torch
    base, drafts = model.pseudo_speculative_generate(torch.arange(1, 9).unsqueeze(0), steps=2)
print(json.dumps({"applied": applied, "unpatched": unpatched, "drafts": list(drafts.shape)}))
"""



def test_eagle_runs_on_cpu_only_on_the_modelopt_its_stand_ins_were_verified_on(monkeypatch: pytest.MonkeyPatch) -> None:
    assert drafts.eagle_blocker() is None  # the pinned modelopt
    monkeypatch.setattr(drafts, "version", lambda package: "0.46.1")
    reason = drafts.ALGORITHMS["eagle3"].cpu_blocker()
    assert reason is not None and "verified on nvidia-modelopt [0.47.0, 0.48.0), not 0.46.1" in reason
    assert drafts.ALGORITHMS["medusa"].cpu_blocker() is None


@pytest.mark.e2e
def test_modelopt_mtp_reuse_of_the_base_decoder_lacks_config_fields_and_the_workaround_drafts() -> None:
    done = subprocess.run([sys.executable, "-c", _CONVERT_MTP, str(free_port())], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"eagle-local-core-attention", "eagle-torch-norm", "eagle-duplicated-linear"} <= set(result["applied"])
    assert "use_aux_hidden_state" in result["unpatched"], (
        f"FIXED? modelopt's EAGLE_MTP convert no longer fails on the base config ({result['unpatched']}): "
        "remove drafts._reuse_base_config and this test")
    assert result["drafts"] == [1, 2]
