"""Small stand-ins for a transformer, and the training loop the fast-path oracle tests share."""

from __future__ import annotations

import torch
from torch import nn

from adarank.training.loop import optimization_step
from adarank.training.optim import GrowingLinearSchedule, build_optimizer


class ToyBlock(nn.Module):
    """Two adaptable linears (``query``, ``value``) mixed non-linearly, then a LayerNorm."""

    def __init__(self, width: int):
        super().__init__()
        self.query = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
        return self.norm(x + torch.tanh(self.query(x)) * self.value(x))


class ToyEncoder(nn.Module):
    """``encoder.layer.{i}.{query,value}`` plus a ``classifier`` head. Input (batch, width) or
    (batch, tokens, width), pooled by the mean over tokens; returns logits, or the cross-entropy
    loss when ``labels`` are given."""

    def __init__(self, width: int, num_labels: int, num_layers: int = 3):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([ToyBlock(width) for _ in range(num_layers)])
        self.classifier = nn.Linear(width, num_labels)

    def forward(self, x, labels=None):
        for block in self.encoder.layer:
            x = block(x)
        logits = self.classifier(x.mean(1) if x.dim() == 3 else x)
        return logits if labels is None else nn.functional.cross_entropy(logits, labels)


class ToyStack(nn.Module):
    """``modules`` adaptable linears in a row (``layers.0`` ...) with tanh, plus a ``head``;
    input (batch, width) or (batch, tokens, width), pooled by the mean over tokens."""

    def __init__(self, modules: int, width: int, num_labels: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(modules))
        self.head = nn.Linear(width, num_labels)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x.mean(1) if x.dim() == 3 else x)


def train_toy(method, model, steps: int, width: int, max_grad_norm: float, classes: int = 3):
    """``steps`` optimizer steps of the harness's own step (``optimization_step``) on random
    batches of 6 × 5 tokens (seeded); returns the optimizer and the losses."""
    method.set_total_steps(steps)
    optimizer = build_optimizer(method.optimizer_groups(model, 0.01), 5e-3)
    scheduler = GrowingLinearSchedule(optimizer, 10, steps)
    data = torch.Generator().manual_seed(1)
    losses = []
    for step in range(steps):
        x = torch.randn(6, 5, width, generator=data)
        y = torch.randint(0, classes, (6,), generator=data)
        loss = nn.functional.cross_entropy(model(x), y)
        extra = method.extra_loss(model)
        loss = loss if extra is None else loss + extra
        optimization_step(method, model, optimizer, scheduler, loss, step, steps, max_grad_norm)
        losses.append(loss.item())
    return optimizer, losses
