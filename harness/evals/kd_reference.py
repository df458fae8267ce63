"""Knowledge-distillation losses written independently of modelopt, from full-vocabulary logits and
full hidden states, as modelopt's Megatron plugin documents them:

- logits: KL(teacher || student) of the temperature-softened distributions, summed over the
  vocabulary, averaged over tokens (no T^2 factor); the top-k variant restricts both distributions to
  the teacher's k largest logits and renormalises there;
- intermediates: 1 - cosine similarity, or the mean squared error over the hidden dimension, averaged
  over tokens; several pairs are averaged;
- the balancer: the intermediate loss is rescaled to the logits loss's magnitude; without
  ``skip_lm_loss`` the distillation part is rescaled to the LM loss's magnitude and added to it times
  ``kd_loss_scale``.

Inputs are ``[batch, seq, ...]``; every loss comes back as a float64 scalar so the comparison, not
the reference, decides the gap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def logits_kl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, top_k: int | None = None
) -> torch.Tensor:
    s, t = student.double() / temperature, teacher.double() / temperature
    if top_k is not None:
        t, index = t.topk(top_k, dim=-1)
        s = s.gather(-1, index)
    log_p_teacher, log_p_student = t.log_softmax(-1), s.log_softmax(-1)
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1).mean()


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (1 - F.cosine_similarity(student.double(), teacher.double(), dim=-1)).mean()


def mse_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (student.double() - teacher.double()).pow(2).mean()


def lm_loss(student: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(student.double().flatten(0, -2), labels.flatten())


@dataclass(frozen=True)
class KdLosses:
    """What Megatron logs for a distillation step."""

    logits_loss: float
    intermediate_loss: float  # mean over pairs, before rescaling (0 without pairs)
    kd_loss: float  # the total the student backpropagates
    lm_loss: float


def balance(
    logits: float, intermediates: list[float], lm: float, *, skip_lm_loss: bool, kd_loss_scale: float
) -> KdLosses:
    intermediate = sum(intermediates) / max(1, len(intermediates))
    scaled = logits if intermediate > 0 else intermediate  # intermediate * (logits / intermediate)
    kd = logits + scaled
    if skip_lm_loss:
        total = kd
    else:
        kd = lm if kd > 0 and lm > 0 else kd  # kd * (lm / kd)
        total = lm + kd_loss_scale * kd
    return KdLosses(logits_loss=logits, intermediate_loss=intermediate, kd_loss=total, lm_loss=lm)
