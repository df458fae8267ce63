"""Draft heads on a megatron model through modelopt's speculative API (``mtsp.convert``), trained
briefly by self-distillation and shipped as subjects (harness.models.subjects); acceptance measured the way Megatron's
post-training code
does it, and a real draft-then-verify decoding loop for losslessness and speed.

No KV cache anywhere: autoregressive and speculative decoding both re-run the full prefix, so the
speedup compares like with like (it is the harness's regression signal, not a serving number).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from harness.data.corpus import MarkovCorpus
from harness.data.multiple_choice import Tokenizer
from harness.data.text import CORPUS
from harness.records import ModelSpec
from harness.runtime.drafts import DraftAlgorithm, HeadRecipe
from harness.runtime.forward import device, on_device, positions


def with_drafts(
    spec: ModelSpec, algorithm: DraftAlgorithm, steps: int, seed: int, workaround: bool = True
) -> torch.nn.Module:
    """``spec`` converted by modelopt with ``steps`` draft heads of ``algorithm``, on the worker's device;
    ``workaround``: around the algorithm's known training defect (the heads the harness ships have it)."""
    import modelopt.torch.speculative as mtsp

    from harness.runtime.subject import build_model

    modes = algorithm.modes(steps, spec)
    base = build_model(spec, seed=seed)
    for _, config in modes:
        algorithm.before_convert(base, config)
    model = on_device(mtsp.convert(base, modes), f"after mtsp.convert({algorithm.name})")
    algorithm.prepare(model)
    if workaround:
        algorithm.workaround(model)
    return model


@torch.no_grad()
def base_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary next-token logits ``[batch, seq, vocab]`` of the converted model's base."""
    return model(tokens, positions(tokens), None)


@torch.no_grad()
def greedy(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    tokens = prompt
    for _ in range(new_tokens):
        tokens = torch.cat((tokens, base_logits(model, tokens)[:, -1:].argmax(dim=-1)), dim=1)
    return tokens


@torch.no_grad()
def speculative(
    model: torch.nn.Module, algorithm: DraftAlgorithm, prompt: torch.Tensor, new_tokens: int, steps: int
) -> torch.Tensor:
    """Draft, then verify every draft with one forward of the base: the accepted drafts and the
    base's own next token are kept. Greedy, so the output must equal ``greedy``'s exactly."""
    tokens, end = prompt, prompt.shape[1] + new_tokens
    while tokens.shape[1] < end:
        base, drafts = algorithm.draft(model, tokens, steps)
        candidate = torch.cat((tokens, base, drafts), dim=1)
        verified = base_logits(model, candidate)[:, tokens.shape[1] :].argmax(dim=-1)  # after base, after each draft
        agree = (drafts[0] == verified[0, :-1]).int()
        accepted = int(agree.cumprod(0).sum())
        tokens = torch.cat((tokens, base, drafts[:, :accepted], verified[:, accepted : accepted + 1]), dim=1)
    return tokens[:, :end]


@dataclass
class Acceptance:
    """Megatron's measure: from each position of the ground truth, one draft step; the base token
    plus the leading drafts that match the ground truth are accepted.

    Also the drafts judged directly (``forced_*``): from every position of the ground truth, whether the
    draft's k-th token equals the ground truth's, whether or not acceptance ever reaches position k there.
    Acceptance stops at the first wrong draft, so a defect in later positions can hide from it; not here."""

    steps: int = 0
    generated: int = 0
    base_mismatches: int = 0  # the draft step's base token differs from greedy decoding
    attempted: list[int] = field(default_factory=list)  # per draft position: reached (all earlier ones accepted)
    accepted: list[int] = field(default_factory=list)
    forced_total: list[int] = field(
        default_factory=list
    )  # per draft position: ground-truth positions with a token there
    forced_correct: list[int] = field(default_factory=list)
    # per draft position: the draft's token from every ground-truth position (prompt by prompt), right or wrong
    draft_tokens: list[list[int]] = field(default_factory=list)

    @property
    def length(self) -> float:
        return self.generated / self.steps

    def rate(self, position: int) -> float:
        return self.accepted[position] / self.attempted[position] if self.attempted[position] else 0.0

    def joint_rate(self, position: int) -> float:
        """The chance a draft step accepts positions 1..N: the product of the conditional rates (vLLM's per-position
        gate)."""
        joint = 1.0
        for j in range(position + 1):
            joint *= self.rate(j)
        return joint

    def draft_accuracy(self, position: int) -> float:
        return self.forced_correct[position] / self.forced_total[position] if self.forced_total[position] else 0.0


@torch.no_grad()
def measure_acceptance(
    model: torch.nn.Module, algorithm: DraftAlgorithm, truths: list[torch.Tensor], prompt_lens: list[int], steps: int
) -> Acceptance:
    result = Acceptance(
        attempted=[0] * steps,
        accepted=[0] * steps,
        forced_total=[0] * steps,
        forced_correct=[0] * steps,
        draft_tokens=[[] for _ in range(steps)],
    )
    for truth, start in zip(truths, prompt_lens, strict=True):
        drafted = {
            position: algorithm.draft(model, truth[:, :position], steps) for position in range(start, truth.shape[1])
        }
        for position, (_, drafts) in drafted.items():
            for j in range(steps):
                result.draft_tokens[j].append(int(drafts[0, j]))
            for j in range(min(steps, truth.shape[1] - position - 1)):
                result.forced_total[j] += 1
                result.forced_correct[j] += int(drafts[0, j] == truth[0, position + 1 + j])
        position = start
        while position < truth.shape[1]:
            base, drafts = drafted[position]
            result.base_mismatches += int(base[0, 0] != truth[0, position])
            reachable = min(steps, truth.shape[1] - position - 1)
            accepted = 0
            for j in range(reachable):
                result.attempted[j] += 1
                if drafts[0, j] != truth[0, position + 1 + j]:
                    break
                result.accepted[j] += 1
                accepted += 1
            result.steps += 1
            result.generated += 1 + accepted
            position += 1 + accepted
    return result


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: param for name, param in model.named_parameters() if param.requires_grad}


def _train(model: torch.nn.Module, data: torch.Tensor, recipe: HeadRecipe) -> None:
    optimizer = torch.optim.Adam(_trainable(model).values(), lr=recipe.lr)
    model.train()
    for step in range(recipe.steps):
        batch = data[step % data.shape[0]]
        inputs, labels = batch[:, :-1], batch[:, 1:]
        loss = model(inputs, positions(inputs), None, labels=labels).float().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def train_heads(
    model: torch.nn.Module, recipe: HeadRecipe, tokenizer: Tokenizer, corpus: MarkovCorpus, source: str = CORPUS
) -> None:
    """Self-distillation: the heads learn the base's own greedy continuations of prefixes from ``source`` (the
    corpus, what ``harness models build`` runs for a heads subject, or a file of real text), the base frozen."""
    from harness.data.text import token_rows

    prefixes = torch.as_tensor(
        token_rows(source, tokenizer, corpus, 8 * recipe.batch_size, recipe.prefix_len, recipe.seed)
    )
    torch.manual_seed(recipe.seed)
    data = greedy(model, prefixes.to(device()), recipe.seq_len - recipe.prefix_len)
    _train(model, data.view(-1, recipe.batch_size, recipe.seq_len), recipe)


def load_heads(model: torch.nn.Module, subject: str, recipe: HeadRecipe) -> None:
    """The shipped heads ``subject`` (trained at TP1) into ``model``'s heads, cut to the current layout."""
    from harness.runtime.subject import shipped_file
    from harness.runtime.weights import load_whole

    load_whole(model, shipped_file(subject, asdict(recipe)), partial=True)
