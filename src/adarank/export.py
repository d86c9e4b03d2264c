"""Export a trained adapter as a plain peft LoRA adapter (or a merged model) that peft, vLLM or TGI
load without this package.

    python -m adarank.export RUN_FOLDER OUT_DIR            # adapter_config.json + adapter_model.safetensors
    python -m adarank.export RUN_FOLDER OUT_DIR --merged   # a full save_pretrained model, ΔW merged

RUN_FOLDER is a finished run saved with ``results.save_adapter=true``. Every method below is an
additive low-rank update ΔW = B·A of some linears, which is what a peft LoRA module computes
(``lora_B(lora_A(x)) · lora_alpha / r``): the export writes, per adapted module, factors with
exactly that product and ``lora_alpha = r`` (scaling 1) through ``rank_pattern`` / ``alpha_pattern``:

* LoRA: A and B as trained, the scaling folded into B;
* AdaLoRA: the triplets its mask kept (E ≠ 0): A ⊙ E and B · α/(ranknum+ε); a module whose every
  triplet was masked has ΔW = 0 and is left out;
* IncreLoRA: every rank-1 block, the reserve included (its E = 1e-5 still acts unless the budget
  closed exactly and zeroed it): A ⊙ E and B · α/(ranknum+ε);
* TriAdaptLoRA: the r×r core (L+U) folded into B: A and B · α/(r+ε)·(L+U);
* rsLoRA, LoRA+, EVA: as LoRA (their own scaling folded into B; EVA at its per-module ranks);
* PiSSA: the update relative to the pretrained weight, [A ; A0] and [s·B | −s·B0] (rank 2r);
* SoRA: the ranks whose gate is non-zero, A[kept] and s·B[:, kept]·g[kept];
* DoRA: its magnitude ∘ direction is no B·A; the export is peft's own DoRA adapter as trained.

Heads (classifier, pooler, qa_outputs) go into ``modules_to_save`` with their trained weights.

Before writing, the export compares the peft model's logits with the trained model's on a fixed
batch (fp64 is not used: both in fp32, tolerance ``TOLERANCE``) and refuses when they differ, so
an export is never silently different from what was trained. That check also catches what peft
cannot express, e.g. an adapter on DeBERTa's ``query_proj`` that must not act on the positional
query (``model.positional_query_adapter``), which the export refuses up front with that reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from adarank import results
from adarank.models import (
    apply_positional_query_option,
    head_module_names,
    load_model,
    load_tokenizer,
    positional_query_adapter,
)

log = logging.getLogger(__name__)

EXPORTABLE = ("lora", "adalora", "increlora", "triadapt", "dora", "rslora", "pissa", "loraplus", "eva", "sora")
#: peft LoRA layers whose update is B·A times their own scaling, exported like LoRA's
PLAIN_LORA = ("lora", "rslora", "loraplus", "eva")
#: exported as the peft adapter they were trained as (no B·A form)
AS_TRAINED = ("dora",)
TOLERANCE = 1e-4  # max |logit difference| the self-check accepts (fp32 sums in another order)
ADAPTER_NAME = "default"


class ExportError(RuntimeError):
    """The run cannot be exported faithfully; the message says why."""


@dataclass
class Trained:
    """A run rebuilt from its folder: the trained model as the harness evaluates it."""

    cfg: object
    metrics: dict
    method: str
    model: nn.Module
    head: str
    num_labels: int


# --- rebuilding the trained model ----------------------------------------------------------------


def task_head(task_cfg) -> tuple[str, int]:
    """(head kind, num_labels) of a task, as data/ builds it."""
    if str(task_cfg.get("kind")).startswith("squad"):
        return "question_answering", 2
    return "sequence_classification", int(task_cfg.num_labels)


def fresh_base(cfg, head: str, num_labels: int) -> nn.Module:
    """The backbone the run started from (a random backbone is rebuilt from the run's seed, as
    run.py seeds before loading it)."""
    from adarank.run import _seed_everything

    _seed_everything(int(cfg.seed))
    return load_model(cfg.model, head, num_labels, float(cfg.task.cls_dropout), cfg.data.cache_dir)


def load_run(run_dir: str | Path) -> Trained:
    run_dir = Path(run_dir)
    metrics_file = run_dir / results.METRICS_FILE
    if not metrics_file.is_file():
        raise ExportError(f"{run_dir} has no {results.METRICS_FILE}: not a finished run")
    metrics = json.loads(metrics_file.read_text())
    cfg = OmegaConf.load(run_dir / "config.yaml")
    method = cfg.method.name
    if method not in EXPORTABLE:
        raise ExportError(f"method={method} is no low-rank adapter peft's LoRA can hold (exportable: {', '.join(EXPORTABLE)})")
    adapter = run_dir / "adapter"
    if not adapter.is_dir():
        raise ExportError(f"{run_dir} has no adapter/ folder: rerun it with results.save_adapter=true")
    refuse_positional_query(cfg)
    head, num_labels = task_head(cfg.task)
    model = fresh_base(cfg, head, num_labels)
    model = LOADERS[method](model, adapter, cfg, metrics, run_dir)
    apply_positional_query_option(model, cfg.model, cfg.task.kind)  # as the run trained it
    model.eval()
    return Trained(cfg, metrics, method, model, head, num_labels)


def refuse_positional_query(cfg) -> None:
    """peft's LoRA on DeBERTa's query_proj also changes the positional query (the relative
    embeddings go through the same module); a run trained without that cannot be expressed.
    null reads as the reference setting of the task kind (false on GLUE, models.py)."""
    setting = cfg.model.get("positional_query_adapter", None)
    if cfg.model.get("family", "deberta") != "deberta" or (setting is None and "task" not in cfg):
        return
    if positional_query_adapter(cfg.model, cfg.task.kind if setting is None else ""):
        return
    if "query_proj" in str(cfg.model.get("target_regex", "")):
        raise ExportError(
            f"model.positional_query_adapter={setting}: the trained adapter on query_proj does not act "
            "on DeBERTa's positional query, but a peft LoRA module on query_proj does; peft cannot "
            "express this run (export a run trained with model.positional_query_adapter=true)"
        )


def _load_peft(model, adapter: Path, cfg, metrics, run_dir) -> nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter))


def _load_triadapt(model, adapter: Path, cfg, metrics, run_dir) -> nn.Module:
    from adarank.methods import method_class

    return method_class("triadapt").load_adapter(model, str(adapter))


class _NoScheduler:
    """restore_structure hands new parameters to a scheduler; the export trains nothing."""

    def add_param_group(self, *args, **kwargs) -> None:
        pass


def _load_increlora(model, adapter: Path, cfg, metrics, run_dir) -> nn.Module:
    """IncreLoRA saves its trainable tensors (trainable.pt): rebuild the grown structure from the
    growth log (as a checkpoint resume does), set the frozen reserve E (1e-5, or 0 when the budget
    closed exactly), then load the tensors."""
    from adarank.methods import method_class

    threshold = OmegaConf.create({**OmegaConf.to_container(cfg.threshold), "name": metrics.get("threshold") or "fixed"})
    method = method_class("increlora")(cfg.method, cfg.task, threshold, cfg.model)
    model = method.prepare(model)
    growth = [json.loads(line) for line in (run_dir / "growth_log.jsonl").read_text().splitlines() if line.strip()]
    method.restore_structure(model, _NoScheduler(), {"reserve_added": True, "growth_log": growth})
    if (metrics.get("rank") or {}).get("reserve_zeroed"):
        for layer in method.layers.values():
            layer.zero_reserve()
    state = torch.load(adapter / "trainable.pt", map_location="cpu")
    loaded = model.load_state_dict(state, strict=False)
    if loaded.unexpected_keys:
        raise ExportError(f"IncreLoRA tensors that the rebuilt structure lacks: {loaded.unexpected_keys[:5]}")
    pattern = json.loads((run_dir / "rank_pattern.json").read_text())
    for name, layer in method.layers.items():
        if layer.rank != pattern.get(name):
            raise ExportError(f"{name}: rebuilt rank {layer.rank} != the run's {pattern.get(name)}")
    return model


def _load_own(method: str):
    """Methods whose class rebuilds its saved adapter (``load_adapter``)."""

    def load(model, adapter: Path, cfg, metrics, run_dir) -> nn.Module:
        from adarank.methods import method_class

        return method_class(method).load_adapter(model, str(adapter))

    return load


LOADERS = {"lora": _load_peft, "adalora": _load_peft, "increlora": _load_increlora, "triadapt": _load_triadapt,
           **dict.fromkeys(("dora", "rslora", "loraplus", "eva"), _load_peft),
           "pissa": _load_own("pissa"), "sora": _load_own("sora")}


# --- ΔW = B·A per module ---------------------------------------------------------------------------


def lora_factors(model: nn.Module, method: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name in the plain backbone: (A r×in, B out×r)} with B·A the module's whole update."""
    out = {}
    for name, module in model.named_modules():
        factors = _factors(module, method)
        if factors is not None:
            out[name.removeprefix("base_model.model.")] = factors
    if not out:
        raise ExportError(f"no {method} layer found in the rebuilt model")
    return out


def _factors(module: nn.Module, method: str):
    with torch.no_grad():
        if method == "pissa":
            if hasattr(module, "pissa_initial"):
                from adarank.methods.pissa import conversion_factors

                return conversion_factors(module)
        elif method == "sora":
            from adarank.methods.sora import SoRALinear, pruned_factors

            if isinstance(module, SoRALinear):
                return pruned_factors(module)
        elif method in PLAIN_LORA:
            from peft.tuners.lora import LoraLayer

            if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A:
                a = module.lora_A[ADAPTER_NAME].weight
                b = module.lora_B[ADAPTER_NAME].weight * module.scaling[ADAPTER_NAME]
                return a.detach().clone(), b.detach().clone()
        elif method == "adalora":
            from peft.tuners.adalora import AdaLoraLayer

            if isinstance(module, AdaLoraLayer) and ADAPTER_NAME in module.lora_A:
                a = module.lora_A[ADAPTER_NAME] * module.lora_E[ADAPTER_NAME]
                kept = module.lora_E[ADAPTER_NAME].flatten() != 0  # masked triplets add nothing
                scale = module.scaling[ADAPTER_NAME] / (module.ranknum[ADAPTER_NAME] + 1e-5)
                b = module.lora_B[ADAPTER_NAME] * scale
                return a[kept].detach().clone(), b[:, kept].detach().clone()
        elif method == "increlora":
            if hasattr(module, "matrices") and hasattr(module, "ranknum") and hasattr(module, "base"):
                a, e, b = module.matrices()
                return (a * e).detach().clone(), (b * (module.scaling / (module.ranknum + 1e-5))).detach().clone()
        elif method == "triadapt":
            if hasattr(module, "factor_a") and hasattr(module, "factor_d"):
                blocks = module.block_tensors()
                a = module.factor_a(blocks)
                b = module.factor_b(blocks) @ module.factor_d(module.scaling, blocks)
                return a.detach().clone(), b.detach().clone()
    return None


def trained_heads(trained: Trained) -> dict[str, dict[str, torch.Tensor]]:
    """{head module name: its trained state} (peft's ModulesToSaveWrapper unwrapped)."""
    plain = _plain_model(trained.model)
    heads = {}
    for name in head_module_names(plain, trained.cfg.model.head_modules):
        module = plain.get_submodule(name)
        inner = getattr(module, "modules_to_save", None)
        if inner is not None and ADAPTER_NAME in inner:
            module = inner[ADAPTER_NAME]
        heads[name] = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return heads


def _plain_model(model: nn.Module) -> nn.Module:
    from peft import PeftModel

    return model.base_model.model if isinstance(model, PeftModel) else model


# --- building and checking the peft model ---------------------------------------------------------


def build_peft_model(trained: Trained):
    """A fresh backbone with a plain peft LoRA adapter holding the trained update and heads."""
    from peft import LoraConfig, get_peft_model

    if trained.method in AS_TRAINED:
        from adarank.methods.peft_support import peft_rank_pattern

        config = trained.model.peft_config[ADAPTER_NAME]
        return trained.model, config, peft_rank_pattern(trained.model, lambda module: module.r[ADAPTER_NAME])

    factors = {name: ab for name, ab in lora_factors(trained.model, trained.method).items() if ab[0].shape[0] > 0}
    heads = trained_heads(trained)
    ranks = {name: int(a.shape[0]) for name, (a, _) in factors.items()}
    common = max(set(ranks.values()), key=list(ranks.values()).count)
    config = LoraConfig(
        r=common,
        lora_alpha=common,
        target_modules=sorted(factors),
        rank_pattern={n: r for n, r in ranks.items() if r != common},
        alpha_pattern={n: r for n, r in ranks.items() if r != common},  # alpha = r: scaling 1
        lora_dropout=float(trained.cfg.task.get("lora_dropout") or 0.0),
        modules_to_save=sorted(heads),
        bias="none",
    )
    base = fresh_base(trained.cfg, trained.head, trained.num_labels)
    peft_model = get_peft_model(base, config)
    plain = peft_model.base_model.model
    with torch.no_grad():
        for name, (a, b) in factors.items():
            layer = plain.get_submodule(name)
            if layer.r[ADAPTER_NAME] != a.shape[0] or layer.scaling[ADAPTER_NAME] != 1.0:
                raise ExportError(f"{name}: peft built rank {layer.r[ADAPTER_NAME]} / scaling {layer.scaling[ADAPTER_NAME]}")
            layer.lora_A[ADAPTER_NAME].weight.copy_(a)
            layer.lora_B[ADAPTER_NAME].weight.copy_(b)
        for name, state in heads.items():
            plain.get_submodule(name).modules_to_save[ADAPTER_NAME].load_state_dict(state)
    peft_model.eval()
    return peft_model, config, ranks


def probe_batch(trained: Trained, size: int = 4, length: int = 24) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    vocab = int(_plain_model(trained.model).config.vocab_size)
    ids = torch.randint(1000, min(vocab, 20000), (size, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def outputs_of(model: nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch)
    if hasattr(out, "logits"):
        return out.logits
    return torch.stack([out.start_logits, out.end_logits], -1)


def self_check(trained: Trained, exported: nn.Module) -> float:
    batch = probe_batch(trained)
    difference = float((outputs_of(trained.model, batch) - outputs_of(exported, batch)).abs().max())
    if difference > TOLERANCE:
        raise ExportError(
            f"the peft model's outputs differ from the trained model's by {difference:.2e} "
            f"(> {TOLERANCE:g}): peft cannot express this {trained.method} run; nothing written"
        )
    return difference


def export(run_dir: str | Path, out_dir: str | Path, merged: bool = False) -> dict:
    """Write the export; return a summary (also written as OUT_DIR/adarank_export.json)."""
    trained = load_run(run_dir)
    peft_model, config, ranks = build_peft_model(trained)
    difference = self_check(trained, peft_model)
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    base_name = _base_name(trained.cfg)
    if merged:
        model = peft_model.merge_and_unload()
        model.save_pretrained(out_dir)
    else:
        peft_model.peft_config[ADAPTER_NAME].base_model_name_or_path = base_name
        peft_model.save_pretrained(out_dir)
    try:
        load_tokenizer(trained.cfg.model, trained.cfg.data.cache_dir).save_pretrained(out_dir)
    except Exception as err:  # noqa: BLE001 - the tokenizer is a convenience, the weights are the export
        log.warning("tokenizer not saved: %s", err)
    summary = {
        "run": str(Path(run_dir).resolve()),
        "method": trained.method,
        "merged": merged,
        "base_model": base_name,
        "head": trained.head,
        "num_labels": trained.num_labels,
        "modules": len(ranks),  # peft may save target_modules as shorter suffixes matching the same modules
        "ranks": ranks,
        "rank_pattern": {n: int(r) for n, r in (config.rank_pattern or {}).items()},
        "r": config.r,
        "modules_to_save": list(config.modules_to_save),
        "max_abs_output_difference": difference,
        "final": trained.metrics.get("final"),
    }
    (out_dir / "adarank_export.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _base_name(cfg) -> str | None:
    """Where the backbone comes from: a hub id or local folder (None for a random backbone, which
    only this package can rebuild: ``adarank.export.fresh_base``)."""
    from adarank.models import model_location

    if cfg.model.source == "random":
        return None
    return str(model_location(cfg.model))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="export a run's adapter as a plain peft LoRA adapter")
    parser.add_argument("run", help="run folder (trained with results.save_adapter=true)")
    parser.add_argument("out", help="output folder (replaced)")
    parser.add_argument("--merged", action="store_true", help="write a full model with ΔW merged instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = export(args.run, args.out, merged=args.merged)
    except ExportError as err:
        print(f"export: {err}", file=sys.stderr)
        return 2
    kind = "merged model" if summary["merged"] else "peft LoRA adapter"
    print(f"{kind} of a {summary['method']} run ({summary['modules']} modules, r={summary['r']}, "
          f"{len(summary['rank_pattern'])} in rank_pattern, heads {summary['modules_to_save']}) in {args.out}; "
          f"outputs match the trained model within {summary['max_abs_output_difference']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
