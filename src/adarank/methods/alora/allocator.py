"""ALoRA's allocation round (paper §3.3-3.4, Algorithm 1, footnotes 2-3), as pure pieces:

* :func:`round_steps`: the optimizer steps at which the rounds run (K1, then every K2; reading L6);
* :func:`ablation_configs`: the gate configurations one round evaluates: the super-network M,
  and for every live rank r: M\\r (r off) and M_r (only r on in the whole network);
* :func:`ablation_scores`: S = −loss of every configuration on the held-out batch, many
  configurations per forward pass (the batch repeated along the batch dimension, each copy with
  its own gate row);
* :func:`importance`: IS(r) = S(M) − S(M\\r) + S(M_r)   (Eq. 6);
* :func:`lowest`: the n_A live ranks with the lowest IS (ties: the earlier rank);
* :func:`distribute`: n_A new ranks over the modules that lost none, as evenly as possible, the
  remainder to the modules with the higher mean IS (footnote 3).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

LABEL_KEYS = ("labels", "start_positions", "end_positions")


def round_steps(steps_per_epoch: int, k1_epochs: float, k2_epochs: float, rounds: int) -> list[int]:
    """0-based optimizer steps t at which round n = 0..rounds-1 runs: t = K1 + n·K2 with
    K1 = round(k1·E), K2 = max(1, round(k2·E)), E = steps per epoch (half up)."""
    k1 = max(1, math.floor(k1_epochs * steps_per_epoch + 0.5))
    k2 = max(1, math.floor(k2_epochs * steps_per_epoch + 0.5))
    return [k1 + n * k2 for n in range(rounds)]


def ablation_configs(live: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(configs, ranks) for a 0/1 vector ``live`` over all slots of all modules (length S):
    ``ranks`` = the live slot indices r_1..r_n; ``configs`` (1 + 2n) x S: row 0 = M, row 1+i =
    M minus r_i, row 1+n+i = only r_i on."""
    ranks = torch.nonzero(live).flatten()
    n = ranks.numel()
    configs = live.new_zeros(1 + 2 * n, live.numel())
    configs[: 1 + n] = live
    index = torch.arange(n, device=live.device)
    configs[1 + index, ranks] = 0
    configs[1 + n + index, ranks] = 1
    return configs, ranks


def per_example_loss(outputs, batch: dict) -> torch.Tensor:
    """The task loss of every example, the quantity transformers' heads average: cross-entropy
    (classification), squared error (regression, one label), the mean of the start and end
    cross-entropies (extractive QA)."""
    if "start_positions" in batch:
        start, end = outputs.start_logits, outputs.end_logits
        ignored = start.size(1)
        s = batch["start_positions"].clamp(0, ignored)
        e = batch["end_positions"].clamp(0, ignored)
        return (F.cross_entropy(start.float(), s, ignore_index=ignored, reduction="none")
                + F.cross_entropy(end.float(), e, ignore_index=ignored, reduction="none")) / 2
    logits, labels = outputs.logits.float(), batch["labels"]
    if logits.size(-1) == 1:
        return (logits.squeeze(-1) - labels.float()) ** 2
    return F.cross_entropy(logits, labels, reduction="none")


def hf_loss(model, batch: dict) -> torch.Tensor:
    """Per-example loss of a transformers model on ``batch`` (labels kept out of the forward)."""
    inputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
    return per_example_loss(model(**inputs), batch)


def ablation_scores(
    model, layers: list, configs: torch.Tensor, batch: dict, loss_fn: Callable = hf_loss, examples_per_forward: int = 256,
) -> tuple[torch.Tensor, int]:
    """S(config) = −mean loss on ``batch`` for every row of ``configs`` (C x S, S = the slots of
    ``layers`` in order; row 0 must be the super-network M); returns (S of shape (C,), number
    of forward passes).

    A forward pass takes up to k = max(1, examples_per_forward // n) configurations: the
    n-example batch repeated k times along dimension 0 (copy j = configuration j), every layer
    getting the matching rows of its gate columns as per-example gates. Row 0 goes alone first;
    that pass also finds the layers that see an input shared by the whole batch (DeBERTa's
    relative-position projections), and only configurations that agree on those layers' gates
    share a forward pass afterwards. Runs in eval mode, without gradients."""
    n = next(iter(batch.values())).shape[0]
    if n < 2:
        raise ValueError("the scoring batch needs at least 2 examples")
    per_forward = max(1, examples_per_forward // n)
    widths = [layer.slots for layer in layers]
    was_training = model.training
    model.eval()
    scores = torch.empty(configs.shape[0], device=configs.device)
    forwards = 0

    def run(rows: list[int]) -> None:
        nonlocal forwards
        k = len(rows)
        gates = configs[rows].repeat_interleave(n, 0)  # (k·n) x S, copy-major like the batch
        for layer, g in zip(layers, gates.split(widths, 1)):
            layer.sample_gates = g
        big = {key: v.repeat(k, *([1] * (v.dim() - 1))) for key, v in batch.items()}
        scores[rows] = -loss_fn(model, big).float().view(k, n).mean(1)
        forwards += 1

    try:
        with torch.no_grad():
            for layer in layers:
                layer.saw_shared_input = False
            run([0])
            columns = [torch.arange(sum(widths[:i]), sum(widths[: i + 1])) for i, layer in enumerate(layers)
                       if layer.saw_shared_input]
            rest = torch.arange(1, configs.shape[0], device=configs.device)
            if columns:
                _, group = torch.unique(configs[1:][:, torch.cat(columns).to(configs.device)], dim=0, return_inverse=True)
            else:
                group = torch.zeros_like(rest)
            for g in torch.unique(group).tolist():
                members = rest[group == g].tolist()
                for start in range(0, len(members), per_forward):
                    run(members[start : start + per_forward])
    finally:
        for layer in layers:
            layer.sample_gates = None
        model.train(was_training)
    return scores, forwards


def importance(scores: torch.Tensor) -> torch.Tensor:
    """IS(r_i) = S(M) − S(M\\r_i) + S(M_{r_i}) from the (1 + 2n) scores of :func:`ablation_configs`."""
    n = (scores.numel() - 1) // 2
    return scores[0] - scores[1 : 1 + n] + scores[1 + n :]


def lowest(values: torch.Tensor, count: int) -> list[int]:
    """Positions of the ``count`` smallest values (ties: the earlier position)."""
    order = sorted(range(values.numel()), key=lambda i: (float(values[i]), i))
    return sorted(order[:count])


def distribute(total: int, modules: list[int], mean_scores: dict[int, float]) -> dict[int, int]:
    """{module: new ranks}: ``total`` ranks over ``modules`` as evenly as possible, one extra
    to each of the (total mod len(modules)) modules with the highest mean IS (ties: earlier
    module). Footnote 3's example: 8 ranks over m1 > m2 > m3 -> 3, 3, 2."""
    if not modules or total <= 0:
        return {}
    base, extra = divmod(total, len(modules))
    ranked = sorted(modules, key=lambda m: (-mean_scores[m], m))
    out = {m: base for m in modules}
    for m in ranked[:extra]:
        out[m] += 1
    return {m: c for m, c in out.items() if c > 0}
