"""The GPU smoke selection: one representative GPU case of every check and of every GPU-only path,
small enough to run, record and report on one GPU in a few minutes (``nox -s gpu_smoke``, the single
command of a short borrowed GPU session). Cases needing two GPUs skip with the reason on one.
tests/unit/test_gpu_paths.py keeps every id here a real case of the suites."""

from __future__ import annotations

GPU_SMOKE: tuple[str, ...] = (
    # checkpoints: same layout bit-exact, and a TP reshard (2 GPUs); TE _extra_state in the modelopt spec
    "ckpt/tiny-gpt/tp1pp1/int8_sq[gpu]",
    "ckpt/tiny-gpt/tp1pp1/none/bf16[gpu]",
    "ckpt/tiny-gpt/tp1pp1->tp2pp1/int4_awq[gpu]",
    # quantization: the CUDA-only formats (nvfp4, fp8 KV cache on TEDotProductAttention), INT4 AWQ, bf16
    "quant/tiny-gpt-trained/tp1pp1/fp8+fp8_kv[gpu]",
    "quant/tiny-gpt-trained/tp1pp1/nvfp4[gpu]",
    "quant/tiny-gpt-trained/tp1pp1/int4_awq[gpu]",
    "quant/tiny-gpt-trained/tp1pp1/fp8/bf16[gpu]",
    # a mixture of experts through the modelopt spec (TE's router GEMM), its expert census
    "quant-moe/tiny-moe-trained/tp1pp1/fp8[gpu]",
    # the Hugging Face export of a TE-spec model: FP8, and NVFP4's two-level scales (CUDA only) in bf16
    "export/tiny-llama-trained/tp1pp1/fp8[gpu]",
    "export/tiny-llama-trained/tp1pp1/nvfp4/bf16[gpu]",
    # distillation: the known defect's case in fp32 and bf16, a short trajectory, TP2 (2 GPUs)
    "kd/tiny-gpt-student/tp1pp1/lm-scaled/none[gpu]",
    "kd/tiny-gpt-student/tp1pp1/lm-scaled/none/bf16[gpu]",
    "kd/tiny-gpt-student/tp2pp1/logits+cosine/none[gpu]",
    "kd-trajectory/tiny-gpt-student/tp1pp1/logits+cosine-t2/none[gpu]",
    # speculative decoding: Medusa and EAGLE-3 / EAGLE-MTP (shipped heads), through Transformer Engine on a GPU
    "spec/tiny-gpt-trained/tp1pp1/medusa-k2-t150/none[gpu]",
    "spec/tiny-gpt-trained/tp1pp1/eagle3-k2-t0/none[gpu]",
    "spec/tiny-gpt-trained/tp1pp1/eagle3-k2-t150/none[gpu]",
    "spec/tiny-gpt-trained/tp1pp1/eagle_mtp-k2-t0/none[gpu]",
)


def smoke_expression() -> str:
    """A ``-k`` expression selecting exactly the smoke cases (a key is no other key's substring)."""
    return " or ".join(GPU_SMOKE)
