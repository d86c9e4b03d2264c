"""Which config keys matter to which method, so that runs are compared only on those.

A LoRA run is the same experiment whatever ``task.init_warmup`` says (LoRA never grows), so a
shrunk growth schedule must not separate it from the paper's LoRA runs or from the TriAdaptLoRA
runs it is tabled with. Keys listed in ``ONLY`` (a dotted key or a prefix of one) matter to the
listed methods only; every other key matters to every method. A method not named anywhere here
(a method added later) is compared on every key, which can only split setups, never merge two
different experiments.

The lists follow what each method reads (methods/*.py, conf/method/*.yaml, docs/baselines.md).
"""

from __future__ import annotations

LORA_FAMILY = ("lora", "adalora", "increlora", "triadapt")
GROWING = ("increlora", "triadapt")
KNOWN_METHODS = ("full", "bitfit", "hadapter", *LORA_FAMILY)

#: dotted key (or prefix) -> the methods that read it
ONLY: dict[str, tuple[str, ...]] = {
    "threshold": GROWING,
    "task.reference_rank": LORA_FAMILY,
    "task.alpha": LORA_FAMILY,
    "task.lora_dropout": LORA_FAMILY,
    "task.incre_rank_num": GROWING,
    "task.incre_interval": GROWING,
    "task.init_warmup": GROWING,
    "task.top_h": GROWING,
    "task.beta1": ("adalora", "increlora"),
    "task.beta2": ("adalora", "increlora"),
    "task.reg_orth_coef": ("adalora", "increlora", "triadapt"),
    "task.adalora": ("adalora",),
    # only adapters on query_proj see it (docs/baselines.md P1)
    "model.positional_query_adapter": LORA_FAMILY,
    # AdaLoRA replaces the task's LR warm-up by task.adalora.warmup_steps / warmup_ratio
    "task.warmup_steps": ("full", "bitfit", "hadapter", "lora", "increlora", "triadapt"),
    # full fine-tuning trains at its own method.lr (conf/method/full.yaml), the others at task.lr
    "method.lr": ("full",),
    "task.lr": ("bitfit", "hadapter", *LORA_FAMILY),
}


def matters(key: str, method: str | None) -> bool:
    """True when ``key`` (dotted) can change what a run of ``method`` computes."""
    if method not in KNOWN_METHODS:
        return True
    for prefix, methods in ONLY.items():
        if key == prefix or key.startswith(prefix + "."):
            return method in methods
    return True


def shared(key: str) -> bool:
    """True when ``key`` matters to every known method (a setup-wide key such as the model or
    ``train.max_steps``), False for a method-specific key (``task.adalora.*``, ``task.warmup_steps``,
    and every ``method.*`` option: each method has its own conf/method/<name>.yaml)."""
    if key.startswith("method."):
        return False
    return all(matters(key, method) for method in KNOWN_METHODS)
