"""Typed records that flow one way through the pipeline.

suite file -> ``Case`` (expand) -> ``CaseOutcome`` (launch: raw metrics or an error) ->
``CaseResult`` (compare: a verdict per metric). Nothing downstream mutates an upstream record.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal


def metric_family(name: str) -> str:
    """``kd_loss@007`` (a per-step value) belongs to the family ``kd_loss@*``, whose spec, tolerance and
    budget it takes unless one is given for the exact name."""
    return f"{name.partition('@')[0]}@*" if "@" in name else name


def per_step(name: str) -> bool:
    """A training step's loss (``kd_loss@007``: a loss family indexed by its step number): a trajectory inside one
    run, not a trend across runs. Other families (a layer's ``layer_sqnr_db@03``, a subject's
    ``subject_delta_pts@anatomy``, a draft position's ``position_acceptance@2``) trend like any metric."""
    family, _, index = name.partition("@")
    return family.endswith("_loss") and index.isdigit()


# Measured by the worker around every case (harness.launchers.worker), per rank; a case keeps its largest rank's.
PEAK_MEMORY = "peak_memory_mib"
DEVICE_MEMORY = "device_memory_used_mib"
WORKER_MEMORY = (PEAK_MEMORY, DEVICE_MEMORY)

# The numeric types a model runs in (parameters and activations); suites name them on the dtype axis.
Dtype = Literal["fp32", "bf16"]
Platform = Literal["cpu", "gpu"]


@dataclass(frozen=True, order=True)
class Layout:
    """How a case shards its model. ``ep``: expert-parallel ranks (inside data parallelism: a layout
    needs tp x pp x ep ranks); ``sp``: sequence parallelism over the tensor-parallel ranks; ``vpp``:
    virtual pipeline stages, model chunks per pipeline rank (megatron's interleaved schedule); ``cp``:
    context parallelism, the sequence split over ranks inside attention too (a layout needs tp x pp x cp x ep
    ranks)."""

    tp: int = 1
    pp: int = 1
    ep: int = 1
    sp: bool = False
    vpp: int = 1
    cp: int = 1

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.cp * self.ep

    @property
    def token(self) -> str:
        """``tp2pp1`` (the ids before the new axes), then ``vpp2``, ``cp2``, ``ep2`` and ``sp`` when used."""
        return (
            f"tp{self.tp}pp{self.pp}"
            + (f"vpp{self.vpp}" if self.vpp > 1 else "")
            + (f"cp{self.cp}" if self.cp > 1 else "")
            + (f"ep{self.ep}" if self.ep > 1 else "")
            + ("sp" if self.sp else "")
        )

    @property
    def markers(self) -> set[str]:
        """``tp2``, ``pp2``, ``vpp2``, ``cp2``, ``ep2``, ``sp``: the parallel dimensions a case uses, for ``pytest
        -m``."""
        sizes = {"tp": self.tp, "pp": self.pp, "vpp": self.vpp, "cp": self.cp, "ep": self.ep}
        return {f"{axis}{size}" for axis, size in sizes.items() if size > 1} | ({"sp"} if self.sp else set())

    def errors(self) -> list[str]:
        """What megatron refuses in the layout itself, whatever the model."""
        problems = []
        if self.sp and self.tp == 1:
            problems.append(
                "sp (sequence parallel) needs tp > 1: it splits the sequence over the tensor-parallel ranks"
            )
        if self.vpp > 1 and self.pp == 1:
            problems.append(
                f"vpp={self.vpp} (virtual pipeline stages) needs pp > 1: it interleaves model chunks over the "
                "pipeline ranks"
            )
        return problems


@dataclass(frozen=True)
class TrainRecipe:
    """How the harness trains a zoo model on its synthetic corpus (harness.data.corpus)."""

    corpus_seed: int = 0
    seed: int = 1234
    steps: int = 800
    batch_size: int = 16
    seq_len: int = 64
    lr: float = 3e-3
    warmup_steps: int = 30
    mc_rows: int = 8  # rows of each batch that are answered multiple-choice prompts (harness.evals.mmlu)
    answer_weight: float = 8.0  # loss weight of a question's answer letter against 1 for a text token


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    ffn_hidden_size: int
    vocab_size: int
    max_seq_len: int
    num_query_groups: int | None = None
    normalization: str = "RMSNorm"
    position_embedding_type: str = "rope"
    swiglu: bool = False  # gated SiLU MLP (Llama) instead of GeLU
    qk_layernorm: bool = False  # RMSNorm on queries and keys per head (Qwen3)
    add_bias_linear: bool = True
    norm_epsilon: float = 1e-5
    rotary_base: int = 10000
    rope_scaling_factor: float | None = None  # Llama 3.1 frequency scaling, when the checkpoint uses it
    kv_channels: int | None = None  # per-head width when it is not hidden_size / num_attention_heads
    tied_embeddings: bool = False
    recipe: TrainRecipe | None = None  # None: random weights; else trained once and cached
    hf_path: str | None = None  # weights (and tokenizer) imported from this Hugging Face directory
    checkpoint: str | None = None  # weights loaded from this megatron torch_dist checkpoint
    unavailable: str | None = None  # why this machine cannot build it (a checkpoint that is not here)
    # Set per case by the suite's dtype axis: parameters and activations (megatron's params_dtype, bf16).
    dtype: Dtype = "fp32"
    # Which megatron layer spec builds it (``layer_spec`` below); None: its platform's (LAYERS_BY_PLATFORM),
    # set per case at expansion. A model whose subject is one norm implementation pins it here.
    layers: Literal["local", "modelopt"] | None = None
    # Mixture of experts: None is a dense MLP; else experts per MoE layer, each token routed to ``moe_router_topk``.
    num_moe_experts: int | None = None
    moe_router_topk: int = 2
    moe_router_pre_softmax: bool = False  # softmax over every expert before the top k (no renormalisation)
    # Mamba-hybrid: megatron's hybrid_override_pattern, one character per layer (M Mamba, * attention, - MLP),
    # built as megatron's MambaModel; None is a GPT.
    hybrid_pattern: str | None = None
    mamba_head_dim: int = 64
    mamba_num_groups: int = 2
    # Why no CPU worker can build it: such cases skip on CPU with the reason (harness.schedule).
    gpu_only: str | None = None

    def layout_errors(self, layout: Layout) -> list[str]:
        """Why ``layout`` cannot shard this model (empty when it can)."""
        tp, pp = layout.tp, layout.pp
        if layout.ep > 1 and self.num_moe_experts is None:
            return [f"ep={layout.ep} (expert parallel) needs a mixture-of-experts model; {self.name} is dense"]
        if self.hybrid_pattern is not None and (layout.pp > 1 or layout.vpp > 1):
            return [f"{self.name} is Mamba-hybrid: the harness builds its hybrid stack without pipeline stages"]
        if layout.cp > 1 and self.dtype == "fp32":
            return [
                f"cp={layout.cp} in fp32: Transformer Engine has no attention backend for it (its unfused attention "
                "refuses context parallelism; flash and cuDNN attention refuse fp32); run context parallelism in bf16"
            ]
        mamba = [("mamba_num_groups", self.mamba_num_groups, tp, "tp")] if self.hybrid_pattern else []
        checks = [
            *mamba,
            ("num_moe_experts", self.num_moe_experts or layout.ep, layout.ep, "ep"),
            ("num_attention_heads", self.num_attention_heads, tp, "tp"),
            ("num_query_groups", self.num_query_groups or self.num_attention_heads, tp, "tp"),
            ("vocab_size", self.vocab_size, tp, "tp"),
            ("ffn_hidden_size", self.ffn_hidden_size, tp, "tp"),
            ("num_layers", self.num_layers, pp * layout.vpp, "pp x vpp" if layout.vpp > 1 else "pp"),
        ]
        return [
            f"{what} {value} of model {self.name} is not divisible by {axis}={size}"
            for what, value, size, axis in checks
            if size < 1 or value % size
        ]


class Direction(enum.StrEnum):
    """Which way a metric may move before it is a failure."""

    BOTH = "both"
    HIGHER_IS_BETTER = "higher_is_better"  # fails only when it drops
    LOWER_IS_BETTER = "lower_is_better"  # fails only when it rises


@dataclass(frozen=True)
class Tolerance:
    """How far a metric may move from its baseline: ``abs + rel * |baseline|``, in both directions or
    only in the bad one. ``refresh_rel`` makes a directional tolerance two-sided the way Megatron's
    throughput gate is: moving the good way by more than that share of the baseline also fails,
    asking for the baseline to be re-recorded (a stale, too-easy baseline hides the next regression)."""

    abs: float = 0.0
    rel: float = 0.0
    direction: Direction = Direction.BOTH
    refresh_rel: float = 0.0

    def allowed(self, baseline: float) -> float:
        return self.abs + self.rel * abs(baseline)

    def allows(self, measured: float, baseline: float) -> bool:
        """Whether ``measured`` stays within this tolerance of ``baseline`` (NaN never does)."""
        if math.isnan(measured):
            return False
        diff, allowed = measured - baseline, self.allowed(baseline)
        if self.direction is Direction.BOTH:
            return abs(diff) <= allowed
        bad = -diff if self.direction is Direction.HIGHER_IS_BETTER else diff
        return bad <= allowed and not self.stale(measured, baseline)

    def stale(self, measured: float, baseline: float) -> bool:
        """Whether ``measured`` beat ``baseline`` by more than ``refresh_rel`` (and more than the tolerance, which
        noise may have widened): the baseline needs re-recording."""
        if not self.refresh_rel or self.direction is Direction.BOTH or math.isnan(measured):
            return False
        good = measured - baseline if self.direction is Direction.HIGHER_IS_BETTER else baseline - measured
        return good > max(self.refresh_rel * abs(baseline), self.allowed(baseline))  # never inside the noise

    def band(self, baseline: float) -> tuple[float, float]:
        """The values that pass around ``baseline``: one-sided for a directional tolerance (its good side
        drawn at the baseline)."""
        allowed = self.allowed(baseline)
        low = baseline if self.direction is Direction.LOWER_IS_BETTER else baseline - allowed
        high = baseline if self.direction is Direction.HIGHER_IS_BETTER else baseline + allowed
        return low, high

    def widened(self, band: float) -> Tolerance:
        """At least ``band`` wide (absolute): a tolerance is never tighter than the metric's measured noise."""
        return self if math.isinf(self.abs) or band <= self.abs else replace(self, abs=band)

    def describe(self) -> str:
        if math.isinf(self.abs):
            return "not judged"
        parts = [f"abs {self.abs:g}"] + ([f"rel {self.rel:g}"] if self.rel else [])
        side = "" if self.direction is Direction.BOTH else f", {self.direction.value}"
        refresh = f", re-record above +{self.refresh_rel:g} rel" if self.refresh_rel else ""
        return " + ".join(parts) + side + refresh

    def to_json(self) -> dict[str, Any]:
        return {"abs": self.abs, "rel": self.rel, "direction": self.direction.value, "refresh_rel": self.refresh_rel}

    @classmethod
    def from_json(cls, fields: dict[str, Any]) -> Tolerance:
        return cls(
            float(fields["abs"]),
            float(fields["rel"]),
            Direction(fields["direction"]),
            float(fields.get("refresh_rel", 0.0)),
        )


INFORMATIONAL = Tolerance(abs=math.inf)  # recorded and shown, never a failure (timings, for one)


@dataclass(frozen=True)
class Budget:
    """An absolute bound a metric must respect whatever its baseline (e.g. INT8 loses <= 0.5 points)."""

    min: float | None = None
    max: float | None = None

    def allows(self, value: float) -> bool:
        return (
            not math.isnan(value)
            and (self.min is None or value >= self.min)
            and (self.max is None or value <= self.max)
        )

    def describe(self) -> str:
        low = "-inf" if self.min is None else f"{self.min:g}"
        high = "inf" if self.max is None else f"{self.max:g}"
        return f"budget [{low}, {high}]"


@dataclass(frozen=True)
class KnownDefect:
    """An upstream defect a case reproduces, recognised by its symptom: every named metric within its
    bound. Only the symptom's metrics and those it ``affects`` are excused against their baselines;
    any other failure of the case still fails it."""

    description: str
    symptom: dict[str, Budget]
    id: str = ""
    upstream: str = ""
    affects: tuple[str, ...] = ()

    def shows(self, metrics: dict[str, float]) -> bool:
        return all(name in metrics and bound.allows(metrics[name]) for name, bound in self.symptom.items())

    def excuses(self, metric: str) -> bool:
        return metric in self.symptom or metric in self.affects

    def describe(self) -> str:
        head = f"{self.id}: " if self.id else ""
        where = f" (upstream: {self.upstream})" if self.upstream else ""
        symptom = ", ".join(f"{n} in {b.describe()[7:]}" for n, b in self.symptom.items())
        return f"{head}{self.description}{where} [symptom: {symptom}]"


@dataclass(frozen=True)
class Case:
    id: str
    suite: str
    check: str
    model: str
    model_spec: ModelSpec  # what ``model`` names: architecture and where its weights come from
    layout: Layout
    optimization: str
    params: dict[str, Any]
    platform: Platform
    world_size: int
    markers: tuple[str, ...]
    tolerances: dict[str, Tolerance]
    budgets: dict[str, Budget]
    timeout_s: float
    seed: int
    source: str  # "suites/ckpt.yaml:12", where the case's suite is declared
    known_defect: KnownDefect | None = None  # an upstream defect this case reproduces
    # What the check kept beside the case's baseline when it was recorded (``CaseOutcome.kept``), handed back
    # to the check (harness.pipeline.with_reference): outputs it compares itself, such as draft tokens.
    reference: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Unique per platform: the same case id runs on cpu and gpu with separate baselines."""
        return f"{self.id}[{self.platform}]"


@dataclass(frozen=True)
class CaseOutcome:
    """What the workers returned for one case: metrics, or why there are none."""

    case: Case
    metrics: dict[str, float]
    error: str | None
    duration_s: float
    artifacts: str
    skipped: str | None = None
    # Raw seconds per repetition of what the check timed (e.g. {"autoregressive": (...), "speculative": (...)}),
    # kept for benchmark files (harness.reports.benchmarks); its metrics already summarise them.
    timings: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # Outputs the check asks to keep beside the baseline when it is recorded (plain JSON): the next run's reference.
    kept: dict[str, Any] = field(default_factory=dict)


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NO_BASELINE = "no-baseline"
    UPDATED = "updated"
    ERROR = "error"
    SKIPPED = "skipped"
    XFAIL = "xfail"  # fails as its known defect says it should
    XPASS = "xpass"  # a known defect no longer reproduces: an alert, the run fails until the entry goes


# Verdicts that do not fail a run.
OK_VERDICTS = frozenset({Verdict.PASS, Verdict.UPDATED, Verdict.SKIPPED, Verdict.XFAIL})


@dataclass(frozen=True)
class MetricResult:
    name: str
    measured: float
    baseline: float | None
    tolerance: Tolerance
    verdict: Verdict
    budget: Budget | None = None
    # How the tolerance was reached or why the metric was not judged (noise record, fingerprint).
    note: str = ""

    @property
    def breaches_budget(self) -> bool:
        return self.budget is not None and not self.budget.allows(self.measured)

    def line(self) -> str:
        base = "none" if self.baseline is None else f"{self.baseline:.6g}"
        budget = "" if self.budget is None else f", {self.budget.describe()}"
        note = f" ({self.note})" if self.note else ""
        return (
            f"{self.name}: measured {self.measured:.6g}, baseline {base}, "
            f"tolerance {self.tolerance.describe()}{budget}{note} -> {self.verdict.value}"
        )


@dataclass(frozen=True)
class CaseResult:
    outcome: CaseOutcome
    metrics: tuple[MetricResult, ...] = field(default_factory=tuple)
    environment: str = ""  # the baseline set it was judged against (harness.environment)
    new_environment: bool = False  # that set holds no baselines yet: only budgets (invariants) can fail

    @property
    def case(self) -> Case:
        return self.outcome.case

    @property
    def measured_verdict(self) -> Verdict:
        """The verdict of the numbers alone, before a known defect is taken into account."""
        if self.outcome.skipped is not None:
            return Verdict.SKIPPED
        if self.outcome.error is not None:
            return Verdict.ERROR
        verdicts = {m.verdict for m in self.metrics}
        for worst in (Verdict.FAIL, Verdict.NO_BASELINE, Verdict.UPDATED):
            if worst in verdicts:
                return worst
        return Verdict.PASS

    @property
    def verdict(self) -> Verdict:
        measured, known = self.measured_verdict, self.case.known_defect
        if known is None or measured in (Verdict.SKIPPED, Verdict.ERROR):
            return measured
        # The defect's metrics are excused: while it shows, whatever they fail; once it is gone, their
        # leaving the baselines recorded under the defect (a budget breach is then a failure).
        shows = known.shows(self.outcome.metrics)
        for m in self.metrics:
            if m.verdict is Verdict.FAIL and (not known.excuses(m.name) or (not shows and m.breaches_budget)):
                return Verdict.FAIL
        return Verdict.XFAIL if shows else Verdict.XPASS

    @property
    def ok(self) -> bool:
        return self.verdict in OK_VERDICTS or (self.new_environment and self.verdict is Verdict.NO_BASELINE)

    def message(self) -> str:
        head = f"{self.case.id} [{self.case.platform}]: {self.verdict.value}"
        known = self.case.known_defect
        if self.verdict is Verdict.XFAIL:
            head += f" (known defect: {known.describe()})"
        elif self.verdict is Verdict.XPASS:
            head += f" -- FIXED? the known defect's symptom is gone; remove its known_defects entry: {known.describe()}"
        elif known is not None and known.shows(self.outcome.metrics):
            head += f" (the known defect shows, but metrics it does not excuse fail too: {known.describe()})"
        elif known is not None:
            head += f" (not the known defect's symptom: {known.describe()})"
        elif self.verdict is Verdict.NO_BASELINE and self.new_environment:
            head += f" (environment {self.environment} has no baselines yet: budgets judged, the rest recorded only)"
        if self.outcome.skipped is not None:
            return f"{head} ({self.outcome.skipped})"
        if self.outcome.error is not None:
            return f"{head}\n{self.outcome.error}\nartifacts: {self.outcome.artifacts}"
        lines = [head] + [f"  {m.line()}" for m in self.metrics]
        if not self.ok:
            lines.append(f"  artifacts: {self.outcome.artifacts}")
        return "\n".join(lines)
