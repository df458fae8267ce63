"""modelopt's Megatron distillation, wired the way Megatron post-training wires it: the student is
converted with ``mtd.convert(..., "kd_loss")`` after ``setup_distillation_config``, adjusted with
``adjust_distillation_model_for_mcore``, and run through megatron's own pipeline schedule, whose
loss function hands ``compute_kd_loss`` a reduction that masks, sums and all-reduces like
Megatron's ``loss_func``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from harness.runtime.forward import device, positions

LOSS_NAMES = ("kd_loss", "logits_loss", "intermediate_loss", "lm_loss")


@dataclass(frozen=True)
class KdSettings:
    """The ``DistillationConfig`` fields a case chooses."""

    intermediate: tuple[tuple[str, ...], ...] = ()
    skip_lm_loss: bool = True
    kd_loss_scale: float = 1.0
    temperature: float = 1.0
    top_k: int | None = None
    lm_loss_on_copy: bool = False  # workaround, see _lm_loss_on_a_copy


def _lm_loss_on_a_copy(model: torch.nn.Module) -> None:
    """Workaround for a known defect (suites/kd.yaml ``known_defects``): megatron's
    ``vocab_parallel_cross_entropy`` turns the logits it is given into softmax probabilities in
    place, and in fp32 ``.float()`` does not copy, so with ``skip_lm_loss: false`` the output-layer
    logits modelopt captured for the KL are no longer logits. Computing the LM loss on a copy keeps
    them; the cost is one extra ``[seq, batch, vocab / tp]`` tensor."""
    adjusted = model.compute_language_model_loss

    def on_a_copy(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return adjusted(labels, logits.clone())

    model.compute_language_model_loss = on_a_copy


def distillation_model(student: torch.nn.Module, teacher: torch.nn.Module, settings: KdSettings) -> torch.nn.Module:
    import modelopt.torch.distill as mtd
    from modelopt.torch.distill.plugins.megatron import (
        DistillationConfig,
        adjust_distillation_model_for_mcore,
        setup_distillation_config,
    )

    config = setup_distillation_config(
        DistillationConfig(
            intermediate_layer_pairs=[tuple(pair) for pair in settings.intermediate],
            skip_lm_loss=settings.skip_lm_loss,
            kd_loss_scale=settings.kd_loss_scale,
            logit_kl_temperature=settings.temperature,
            logit_kl_topk=settings.top_k,
        ),
        student.config,
        teacher.config,
    )
    mode = {"teacher_model": teacher, "criterion": config.criterion, "loss_balancer": config.loss_balancer}
    model = mtd.convert(student, mode=[("kd_loss", mode)])
    adjust_distillation_model_for_mcore(model, config)
    if settings.lm_loss_on_copy:
        _lm_loss_on_a_copy(model)
    return model


def _masked_mean(tokens: int, loss: Any) -> torch.Tensor:
    """Megatron's loss masking (all tokens count here): sum, all-reduce partial sums over tensor
    parallelism where modelopt flags them (vocabulary-parallel losses; intermediate losses on a
    sequence-parallel shard, each rank holding its own tokens), divide by the tokens."""
    from megatron.core import parallel_state as ps

    tp_reduce = sequence_parallel = False
    if isinstance(loss, tuple):  # modelopt's (loss, tp_reduce, is_sequence_parallel)
        loss, tp_reduce, sequence_parallel = loss
    total = loss.float().sum()
    if tp_reduce or sequence_parallel:
        dist.all_reduce(total, group=ps.get_tensor_model_parallel_group())
    return total / tokens


def _loss_func(
    model: torch.nn.Module, tokens: int, output: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    lm = _masked_mean(tokens, output)
    losses = model.compute_kd_loss(student_loss=lm, loss_reduction_fn=partial(_masked_mean, tokens))
    values = torch.stack([losses["kd_loss"], losses["logits_loss"], losses["intermediate_loss"], lm]).detach().double()
    return losses["kd_loss"], {"losses": values}


def _forward_step(data_iterator: Any, model: torch.nn.Module) -> tuple[torch.Tensor, Callable[..., Any]]:
    tokens, labels = next(data_iterator)
    return model(tokens, positions(tokens), None, labels=labels), partial(_loss_func, model, labels.numel())


def kd_step(model: torch.nn.Module, tokens: torch.Tensor, labels: torch.Tensor, *, backward: bool) -> dict[str, float]:
    """One microbatch through the schedule (backward too when training); the losses on every rank."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from modelopt.torch.distill.plugins.megatron import get_tensor_shapes_adjust_fn_for_distillation

    batch, seq = tokens.shape
    store = get_forward_backward_func()(
        forward_step_func=_forward_step,
        data_iterator=iter([(tokens, labels)]),
        model=[model],
        num_microbatches=1,
        seq_length=seq,
        micro_batch_size=batch,
        forward_only=not backward,
        adjust_tensor_shapes_fn=get_tensor_shapes_adjust_fn_for_distillation(
            model, seq_length=seq, micro_batch_size=batch, decoder_seq_length=seq
        ),
    )
    values = (
        store[0]["losses"]
        if ps.is_pipeline_last_stage()
        else torch.empty(len(LOSS_NAMES), dtype=torch.float64, device=device())
    )
    if ps.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(
            values, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group()
        )
    return dict(zip(LOSS_NAMES, values.tolist(), strict=True))
