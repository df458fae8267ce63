"""An exported unified Hugging Face checkpoint read as a deployment runtime reads it, without modelopt: the
safetensors, ``config.json`` and ``hf_quant_config.json``, each layer's weights dequantized by its format's
published definition (the TensorRT-LLM / vLLM "modelopt" checkpoint format), then a transformers model of the
architecture in fp32 with the exported activation scales applied as fake quantization.

Formats (``W`` the stored weight, ``s`` its ``weight_scale``):
- FP8: ``W`` float8 E4M3, ``s`` one scale per tensor (or per output channel): ``W x s``.
- INT8 (SmoothQuant, weight-only): ``W`` int8, ``s`` per output channel: ``W x s[:, None]``.
- INT4 AWQ / W4A8 AWQ: two signed 4-bit values per byte, packed along the output dimension (row ``2k`` in the low
  nibble, ``2k+1`` in the high one, shape ``[out / 2, in]``), ``s`` per output channel and input block of
  ``in / s.shape[1]``: ``W[o, i] x s[o, i // block]``.
- NVFP4: two FP4 E2M1 values per byte along the input dimension (element ``2j`` in the low nibble; a nibble is a
  sign bit and an index into 0, 0.5, 1, 1.5, 2, 3, 4, 6), ``s`` FP8 E4M3 per output channel and 16-wide input
  block, ``weight_scale_2`` one fp32 scale: ``W[o, i] x s[o, i // 16] x weight_scale_2``. Its activations are
  quantized in 16-wide blocks whose FP8 scales are computed on the fly from ``input_scale``.
Activations: a ``pre_quant_scale`` multiplies a layer's input (AWQ / SmoothQuant smoothing); an ``input_scale``
fake-quantizes it (FP8: E4M3, saturating at 448; INT8: round to nearest, clamp to ``[-128, 127]``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FP8_MAX = 448.0
FP4_MAX = 6.0
NVFP4_BLOCK = 16
E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# What a quantizer's amax is divided by to give the exported scale, per format (weights; activations below).
WEIGHT_RANGE = {
    "FP8": FP8_MAX,
    "INT8_SQ": 127.0,
    "INT8_WO": 127.0,
    "INT4_AWQ": 7.0,
    "W4A8_AWQ": 7.0,
    "NVFP4": FP4_MAX * FP8_MAX,
}
# The exported scale a weight quantizer's amax determines (NVFP4's per-block scales come from the weights).
WEIGHT_SCALE = {"NVFP4": "weight_scale_2"}
INPUT_RANGE = {"FP8": FP8_MAX, "INT8_SQ": 127.0, "W4A8_AWQ": FP8_MAX, "NVFP4": FP4_MAX * FP8_MAX}
SCALE_SUFFIXES = ("weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale", "k_scale", "v_scale")


class ExportError(ValueError):
    """An exported folder a deployment runtime could not load as it stands."""


@dataclass(frozen=True)
class Exported:
    config: dict[str, Any]
    quantization: dict[str, Any] | None  # hf_quant_config.json's "quantization"; None: the folder states none
    tensors: dict[str, torch.Tensor]  # every stored tensor, as stored

    def layer_format(self, module: str) -> str | None:
        """The format the folder states for ``module`` (an HF module name), None where it is not quantized."""
        if self.quantization is None:
            return None
        layers = self.quantization.get("quantized_layers")
        if layers is not None:
            return (layers.get(module) or {}).get("quant_algo")
        excluded = self.quantization.get("exclude_modules") or []
        if any(_matches(module, pattern) for pattern in excluded):
            return None
        return self.quantization.get("quant_algo")

    def scales(self, module: str) -> dict[str, torch.Tensor]:
        return {s: self.tensors[f"{module}.{s}"] for s in SCALE_SUFFIXES if f"{module}.{s}" in self.tensors}


def _matches(module: str, pattern: str) -> bool:
    from fnmatch import fnmatch

    return module == pattern or fnmatch(module, pattern) or module.startswith(pattern + ".")


def read_exported(folder: Path) -> Exported:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not (folder / "config.json").is_file() or not files:
        raise ExportError(f"{folder}: no config.json or no *.safetensors")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors |= load_file(str(file))
    quant_file = folder / "hf_quant_config.json"
    quantization = json.loads(quant_file.read_text())["quantization"] if quant_file.is_file() else None
    return Exported(json.loads((folder / "config.json").read_text()), quantization, tensors)


def _unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    low, high = (packed & 0x0F).to(torch.int16), (packed >> 4).to(torch.int16)
    low, high = torch.where(low >= 8, low - 16, low), torch.where(high >= 8, high - 16, high)
    return torch.stack([low, high], dim=1).reshape(2 * packed.shape[0], packed.shape[1]).float()


def _per_channel(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return weight.float() * (scale.float().reshape(-1, 1) if scale.numel() > 1 else scale.float())


def _blocked(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    values = _unpack_int4(weight)
    block = values.shape[1] // scale.shape[1]
    return values * scale.float().repeat_interleave(block, dim=1)


def _e2m1(nibbles: torch.Tensor) -> torch.Tensor:
    values = torch.tensor(E2M1, device=nibbles.device)[(nibbles & 0x07).long()]
    return torch.where((nibbles & 0x08) != 0, -values, values)


def _nvfp4(weight: torch.Tensor, scales: dict[str, torch.Tensor]) -> torch.Tensor:
    values = torch.stack([_e2m1(weight & 0x0F), _e2m1(weight >> 4)], dim=-1).flatten(-2)
    block = scales["weight_scale"].float().repeat_interleave(NVFP4_BLOCK, dim=-1)
    return values * block * scales["weight_scale_2"].float()


Dequantizer = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


def _with_scale(dequantize: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Dequantizer:
    return lambda weight, scales: dequantize(weight, scales["weight_scale"])


DEQUANTIZE: dict[str, Dequantizer] = {
    "FP8": _with_scale(_per_channel),
    "INT8_SQ": _with_scale(_per_channel),
    "INT8_WO": _with_scale(_per_channel),
    "INT4_AWQ": _with_scale(_blocked),
    "W4A8_AWQ": _with_scale(_blocked),
    "NVFP4": _nvfp4,
}


def _guessed(weight: torch.Tensor, scale: torch.Tensor) -> str:
    """A weight's format where the folder states none (a runtime would refuse it; the check reports that as
    ``export_recipe_stated`` and still measures what the weights compute): by storage type and scale shape."""
    if weight.dtype == torch.float8_e4m3fn:
        return "FP8"
    if weight.dtype == torch.uint8 and scale.dtype == torch.float8_e4m3fn:
        return "NVFP4"
    if weight.dtype == torch.uint8 and scale.dim() == 2:
        return "INT4_AWQ"
    if weight.dtype == torch.int8:
        return "INT8_WO"
    raise ExportError(f"a {weight.dtype} weight with a {tuple(scale.shape)} scale, and no format stated for it")


def fake_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(x.dtype) * scale


def fake_int8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x / scale).round().clamp(-128, 127) * scale


def _round_e2m1(x: torch.Tensor) -> torch.Tensor:
    grid = torch.tensor(E2M1, dtype=x.dtype, device=x.device)
    nearest = (x.abs().clamp(max=FP4_MAX).unsqueeze(-1) - grid).abs().argmin(dim=-1)
    return torch.sign(x) * grid[nearest]


def fake_nvfp4(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """16-wide blocks, each scaled by its amax / 6 rounded to FP8 in units of ``scale`` (the global input_scale)."""
    blocks = x.unflatten(-1, (-1, NVFP4_BLOCK))
    block_scale = (blocks.abs().amax(dim=-1, keepdim=True) / (FP4_MAX * scale)).to(torch.float8_e4m3fn).to(x.dtype)
    step = (block_scale * scale).clamp_min(torch.finfo(x.dtype).tiny)
    return (_round_e2m1(blocks / step) * step).flatten(-2)


ACTIVATION: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "FP8": fake_fp8,
    "INT8_SQ": fake_int8,
    "W4A8_AWQ": fake_fp8,
    "NVFP4": fake_nvfp4,
}


def dequantized(exported: Exported) -> tuple[dict[str, torch.Tensor], dict[str, tuple[str, dict[str, torch.Tensor]]]]:
    """fp32 weights by HF name, and the quantized modules' (format, scales) for their inputs."""
    weights: dict[str, torch.Tensor] = {}
    quantized: dict[str, tuple[str, dict[str, torch.Tensor]]] = {}
    for name, tensor in exported.tensors.items():
        module, _, leaf = name.rpartition(".")
        if leaf in SCALE_SUFFIXES:
            continue
        if leaf != "weight" or "weight_scale" not in exported.scales(module):
            if not tensor.is_floating_point() or tensor.dtype == torch.float8_e4m3fn:
                raise ExportError(f"{name}: stored as {tensor.dtype} without a weight_scale")
            weights[name] = tensor.float()
            continue
        scales = exported.scales(module)
        fmt = exported.layer_format(module) or _guessed(tensor, scales["weight_scale"])
        if fmt not in DEQUANTIZE:
            raise ExportError(f"{name}: format {fmt!r} stated for {module}, which this reader cannot dequantize")
        weights[name] = DEQUANTIZE[fmt](tensor, scales)
        quantized[module] = (fmt, scales)
    return weights, quantized


Transform = Callable[[torch.Tensor], torch.Tensor]


def _input_transform(fmt: str, scales: dict[str, torch.Tensor], seen: Callable[[torch.Tensor], None]) -> Transform:
    """Smoothing, then fake quantization; ``seen`` gets what the quantizer is handed (the smoothed input)."""
    smooth, scale = scales.get("pre_quant_scale"), scales.get("input_scale")

    def transform(x: torch.Tensor) -> torch.Tensor:
        if smooth is not None:
            x = x * smooth.to(x.dtype)
        if scale is not None:
            seen(x)
            x = ACTIVATION[fmt](x, scale.to(x.dtype))
        return x

    return transform


class InputRanges(dict[str, float]):
    """The largest |input| each activation-quantized module's quantizer was handed, by module name: what its
    exported ``input_scale`` was calibrated to cover."""

    def recorder(self, module: str) -> Callable[[torch.Tensor], None]:
        def seen(x: torch.Tensor) -> None:
            if x.numel():
                self[module] = max(self.get(module, 0.0), float(x.detach().abs().max()))

        return seen


# One expert's projection in the published checkpoint; transformers 5 holds a MoE layer's experts as 3-D parameters
# instead (``<experts>.gate_up_proj`` [E, 2I, H], ``<experts>.down_proj`` [E, H, I]).
EXPERT_WEIGHT = re.compile(r"^(?P<experts>.+\.mlp\.experts)\.(?P<expert>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)$")


def _fused_experts(weights: dict[str, torch.Tensor], fused: set[str]) -> dict[str, torch.Tensor]:
    """``weights`` with each expert's projections stacked into the 3-D parameters of the experts modules in
    ``fused`` (gate rows before up rows, as transformers' forward chunks them)."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[tuple[int, str], torch.Tensor]] = {}
    for name, weight in weights.items():
        found = EXPERT_WEIGHT.match(name.removesuffix(".weight"))
        if found and name.endswith(".weight") and found["experts"] in fused:
            parts.setdefault(found["experts"], {})[(int(found["expert"]), found["proj"])] = weight
        else:
            out[name] = weight
    for experts, held in parts.items():
        count = 1 + max(expert for expert, _ in held)
        projections = ("gate_proj", "up_proj", "down_proj")
        missing = [f"{e}.{p}" for e in range(count) for p in projections if (e, p) not in held]
        if missing:
            raise ExportError(f"{experts}: no weight for expert projection(s) {', '.join(missing)}")
        out[f"{experts}.gate_up_proj"] = torch.stack(
            [torch.cat([held[(e, "gate_proj")], held[(e, "up_proj")]]) for e in range(count)]
        )
        out[f"{experts}.down_proj"] = torch.stack([held[(e, "down_proj")] for e in range(count)])
    return out


def _experts_forward(experts: torch.nn.Module, inputs: dict[tuple[int, str], Transform]) -> Callable[..., torch.Tensor]:
    """transformers' fused experts forward (each routed token through silu(x Wg) * (x Wu), then Wd, weighted by its
    router score), with each expert projection's exported input quantization applied to that projection's input,
    as a runtime that keeps the experts apart computes it."""
    import torch.nn.functional as F

    def same(x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden)
        width = experts.down_proj.shape[-1]
        for e in range(experts.num_experts):
            tokens, slot = torch.where(top_k_index == e)
            if tokens.numel() == 0:
                continue
            x = hidden[tokens]
            gate_up = experts.gate_up_proj[e]
            gate = F.linear(inputs.get((e, "gate_proj"), same)(x), gate_up[:width])
            up = F.linear(inputs.get((e, "up_proj"), same)(x), gate_up[width:])
            y = F.linear(inputs.get((e, "down_proj"), same)(experts.act_fn(gate) * up), experts.down_proj[e])
            out.index_add_(0, tokens, (y * top_k_weights[tokens, slot, None]).to(out.dtype))
        return out

    return forward


def build_model(exported: Exported, ranges: InputRanges | None = None) -> torch.nn.Module:
    """The exported architecture in fp32 with the dequantized weights (every weight must be there: strict);
    ``ranges`` collects what each activation quantizer is handed in the forwards that follow."""
    import transformers

    config = {k: v for k, v in exported.config.items() if k != "quantization_config"}
    hf_config = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
    model = transformers.AutoModelForCausalLM.from_config(hf_config, torch_dtype=torch.float32)
    weights, quantized = dequantized(exported)
    fused = {name for name, module in model.named_modules() if hasattr(module, "gate_up_proj")}
    model.load_state_dict(_fused_experts(weights, fused), strict=True)
    ranges = InputRanges() if ranges is None else ranges
    expert_inputs: dict[str, dict[tuple[int, str], Transform]] = {}
    for module, (fmt, scales) in quantized.items():
        transform = _input_transform(fmt, scales, ranges.recorder(module))
        found = EXPERT_WEIGHT.match(module)
        if found and found["experts"] in fused:
            expert_inputs.setdefault(found["experts"], {})[(int(found["expert"]), found["proj"])] = transform
            continue
        model.get_submodule(module).register_forward_pre_hook(lambda _, args, t=transform: (t(args[0]), *args[1:]))
    for name, inputs in expert_inputs.items():
        experts = model.get_submodule(name)
        experts.forward = _experts_forward(experts, inputs)
    return model.eval()
