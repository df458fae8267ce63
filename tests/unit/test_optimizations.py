"""The optimization registry: formats, KV-cache formats and modifiers compose into one modelopt config."""

from __future__ import annotations

import pytest

from harness.optimizations import get_optimization


def test_kv_cache_formats_compose_with_quantization_formats() -> None:
    assert (
        get_optimization("fp8+fp8_kv").description == "modelopt PTQ with mtq.FP8_DEFAULT_CFG + KV cache mtq.FP8_KV_CFG"
    )
    assert get_optimization("nvfp4+nvfp4_kv").gpu_only is not None
    for bad in ("fp8+int8_kv", "none+fp8_kv", "fp9"):
        with pytest.raises(KeyError):
            get_optimization(bad)
