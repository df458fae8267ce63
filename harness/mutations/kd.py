"""Defects of modelopt's Megatron distillation losses: temperature, direction, tensor-parallel softmax, the balancer."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from harness.mutations.base import Mutation, patch


def _student_unscaled() -> None:
    from modelopt.torch.distill.plugins.megatron import LogitsKLLoss

    def make(pre_forward: Any) -> Any:
        def defective(self: Any, predictions: Any, targets: Any) -> tuple[Any, Any]:
            predictions, targets = pre_forward(self, predictions, targets)
            # output_student = predictions.float(): the temperature divides the teacher only (TopKLogitsKLLoss inherits
            # it)
            return predictions * self._temperature, targets

        return defective

    patch(LogitsKLLoss, "pre_forward", make)


def _reversed() -> None:
    from modelopt.torch.distill.plugins.megatron import LogitsKLLoss

    def make(init: Any) -> Any:
        def defective(self: Any, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            self._reverse = not self._reverse  # KL(student || teacher) where KL(teacher || student) is documented

        return defective

    patch(LogitsKLLoss, "__init__", make)


def _denominator_local() -> None:
    import modelopt.torch.distill.plugins.megatron as plugin

    functional = plugin.dist_nn.functional
    # denom = sum(exp(logits)) without the all_reduce over the tensor-parallel ranks: a local softmax per vocabulary
    # shard
    plugin.dist_nn = SimpleNamespace(
        functional=SimpleNamespace(all_reduce=lambda tensor, group=None: tensor, all_gather=functional.all_gather)
    )


def _intermediate_unscaled() -> None:
    from modelopt.torch.distill.plugins.megatron import LogitsAndIntermediatesLossBalancer

    def make(forward: Any) -> Any:
        def defective(self: Any, loss_dict: dict) -> Any:
            out = forward(self, dict(loss_dict))
            # intermediate_loss_scaled = intermediate_loss: the rescale to the logits loss's magnitude dropped
            if out["intermediate_loss"] > 0 and self._skip_original_loss:
                out["kd_loss"] = out["logits_loss"] + out["intermediate_loss"]
            return out

        return defective

    patch(LogitsAndIntermediatesLossBalancer, "forward", make)


def _scale_not_detached() -> None:
    from modelopt.torch.distill.plugins.megatron import LogitsAndIntermediatesLossBalancer

    def make(forward: Any) -> Any:
        def defective(self: Any, loss_dict: dict) -> Any:
            out = forward(self, dict(loss_dict))
            intermediate, logits = out["intermediate_loss"], out["logits_loss"]
            # dynamic_scale = logits_loss / intermediate_loss (no .detach()): the same value, but the intermediate
            # term's gradient cancels and the logits term's doubles. One step's losses cannot show it.
            if intermediate > 0 and self._skip_original_loss:
                out["kd_loss"] = logits + intermediate * (logits / intermediate)
            return out

        return defective

    patch(LogitsAndIntermediatesLossBalancer, "forward", make)


T2 = "kd/tiny-gpt-student/tp1pp1/logits+mse-t2/none[cpu]"
TRAJECTORY = "kd-trajectory/tiny-gpt-student/tp1pp1/logits+cosine-t2/none[cpu]"
MUTATIONS = (
    Mutation(
        "kd-temperature-teacher-only",
        "a loss term's temperature",
        "LogitsKLLoss divides the teacher's logits by the temperature, not the student's",
        (T2, "kd/tiny-gpt-student/tp1pp1/topk64-t2/none[cpu]", TRAJECTORY),
        _student_unscaled,
        fast=True,
    ),
    Mutation(
        "kd-kl-reversed",
        "a loss term's definition",
        "LogitsKLLoss computes KL(student || teacher) (the reverse flag inverted)",
        ("kd/tiny-gpt-student/tp1pp1/logits/none[cpu]", TRAJECTORY),
        _reversed,
    ),
    Mutation(
        "kd-tp-softmax-local",
        "a reduction across ranks",
        "LogitsKLLoss's softmax denominators are not all-reduced over the tensor-parallel ranks",
        ("kd/tiny-gpt-student/tp2pp1/logits/none[cpu]",),
        _denominator_local,
    ),
    Mutation(
        "kd-intermediate-unscaled",
        "a loss term's scale",
        "the loss balancer adds the intermediate loss without rescaling it to the logits loss",
        ("kd/tiny-gpt-student/tp1pp1/logits+cosine/none[cpu]", TRAJECTORY),
        _intermediate_unscaled,
    ),
    Mutation(
        "kd-balancer-scale-not-detached",
        "a loss term's gradient",
        "the loss balancer's dynamic scale is not detached (same value, other gradients)",
        ("kd/tiny-gpt-student/tp1pp1/logits+cosine/none[cpu]", TRAJECTORY),
        _scale_not_detached,
    ),
)
