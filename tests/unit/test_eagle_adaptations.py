"""modelopt's Megatron EAGLE on CPU: where its Transformer Engine stand-ins apply, and the MTP defect the
harness works around (``drafts._reuse_base_config``), shown on the installed modelopt in a real rank."""

from __future__ import annotations

import pytest

from harness.runtime import drafts

# One gloo rank: the tiny GPT converted by mtsp.convert with EAGLE_MTP's config, without and with the workaround.


def test_eagle_runs_on_cpu_only_on_the_modelopt_its_stand_ins_were_verified_on(monkeypatch: pytest.MonkeyPatch) -> None:
    assert drafts.eagle_blocker() is None  # the pinned modelopt
    monkeypatch.setattr(drafts, "version", lambda package: "0.46.1")
    reason = drafts.ALGORITHMS["eagle3"].cpu_blocker()
    assert reason is not None and "verified on nvidia-modelopt [0.47.0, 0.48.0), not 0.46.1" in reason
    assert drafts.ALGORITHMS["medusa"].cpu_blocker() is None
