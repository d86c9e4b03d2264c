"""`python -m adarank.export`: a run's adapter as a plain peft LoRA adapter. Acceptance (issue 15
§5): in a fresh process, ``PeftModel.from_pretrained(base, OUT_DIR)`` gives the dev accuracy of the
harness's final evaluation and the trained model's logits (1e-5, fp32) for every adapter method."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from adarank import export
from adarank.run import run
from tests.conftest import FAST_DEFAULTS, REPO, compose, merge_overrides

GROWTH = ["task.init_warmup=2", "task.incre_interval=2", "task.warmup_steps=1"]
CASES = {
    "lora": ["method=lora"],
    "adalora": ["method=adalora", "task.adalora.init_warmup=1", "task.adalora.final_warmup=2",
                "task.adalora.mask_interval=1", "task.adalora.warmup_steps=1"],
    "increlora": ["method=increlora", *GROWTH],
    "triadapt": ["method=triadapt", "threshold=linear", *GROWTH],
}

# runs in a fresh interpreter: plain transformers + peft load the export; the harness only reads
# the dev set and scores the predictions (the same evaluate() as the final evaluation)
FRESH = r"""
import json, sys, torch
from omegaconf import OmegaConf
from peft import PeftModel
from transformers import AutoModelForSequenceClassification
from adarank.data import build_task_data
from adarank.models import load_tokenizer
jobs = json.loads(sys.argv[1])
for job in jobs:
    base = AutoModelForSequenceClassification.from_pretrained(job["base"], num_labels=2)
    if job["merged"]:
        model = AutoModelForSequenceClassification.from_pretrained(job["out"])
    else:
        model = PeftModel.from_pretrained(base, job["out"])
    model.eval()
    probe = torch.load(job["probe"])
    with torch.no_grad():
        logits = model(**probe["batch"]).logits
    cfg = OmegaConf.load(job["config"])
    data = build_task_data(cfg.task, cfg.data, cfg.train, load_tokenizer(cfg.model, cfg.data.cache_dir))
    metrics = data.evaluate(model, torch.device("cpu"), final=True)
    print(json.dumps({"name": job["name"], "diff": float((logits - probe["logits"]).abs().max()),
                      "accuracy": metrics["accuracy"]}))
"""


def train_runs(root: Path, glue: Path, model: str, names, extra=()) -> dict[str, Path]:
    folders = {}
    for name in names:
        overrides = merge_overrides(
            {**FAST_DEFAULTS, "data.dir": str(glue), "results.root": str(root / name), "model": model,
             "results.save_adapter": "true", "train.max_steps": "6", "task.batch_size": "8",
             "task.max_seq_length": "32",
             # peft's LoRA puts the adapter on DeBERTa's positional query too: only such runs export
             **({"model.positional_query_adapter": "true"} if model == "tiny" else {})},
            ["task=rte", *CASES[name], *extra],
        )
        run(compose(overrides), overrides)
        [folders[name]] = [p.parent for p in (root / name).rglob("metrics.json")]
    return folders


def round_trip(tmp: Path, folders: dict[str, Path], base_for, merged=()) -> dict[str, dict]:
    """Export every run, keep the trained model's logits on a probe batch, check in a fresh process."""
    jobs = []
    for name, folder in folders.items():
        trained = export.load_run(folder)
        batch = export.probe_batch(trained)
        probe = tmp / f"{name}_probe.pt"
        torch.save({"batch": batch, "logits": export.outputs_of(trained.model, batch)}, probe)
        for is_merged in (False, True) if name in merged else (False,):
            out = tmp / f"{name}_{'merged' if is_merged else 'peft'}"
            export.export(folder, out, merged=is_merged)
            jobs.append({"name": f"{name}{'-merged' if is_merged else ''}", "out": str(out), "merged": is_merged,
                         "base": base_for(trained, tmp), "probe": str(probe), "config": str(folder / "config.yaml")})
    result = subprocess.run([sys.executable, "-c", FRESH, json.dumps(jobs)], capture_output=True, text=True,
                            timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return {r["name"]: r for r in map(json.loads, result.stdout.splitlines()) if r}


def saved_random_base(trained, tmp: Path) -> str:
    """The tiny random backbone, rebuilt from the run's seed and saved where transformers reads it."""
    folder = tmp / "tiny_base"
    if not folder.is_dir():
        export.fresh_base(trained.cfg, trained.head, trained.num_labels).save_pretrained(folder)
    return str(folder)


def test_every_adapter_method_round_trips_through_plain_peft(tmp_path, tiny_glue_dir):
    folders = train_runs(tmp_path / "runs", tiny_glue_dir, "tiny", list(CASES))
    checked = round_trip(tmp_path, folders, saved_random_base, merged=("triadapt",))
    assert set(checked) == {*CASES, "triadapt-merged"}
    for name, outcome in checked.items():
        metrics = json.loads((folders[name.removesuffix("-merged")] / "metrics.json").read_text())
        assert outcome["diff"] <= 1e-5, (name, outcome)
        assert outcome["accuracy"] == metrics["final"]["accuracy"], name
    config = json.loads((tmp_path / "adalora_peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and set(config["modules_to_save"]) == {"classifier", "pooler"}
    kept = json.loads((folders["adalora"] / "rank_pattern.json").read_text())
    ranks = json.loads((tmp_path / "adalora_peft" / "adarank_export.json").read_text())["ranks"]
    assert ranks == {name: r for name, r in kept.items() if r > 0}  # each module at the rank its mask kept
    for name, r in ranks.items():  # per-module rank and alpha = r (scaling 1) through the patterns
        assert config["rank_pattern"].get(name, config["r"]) == r
        assert config["alpha_pattern"].get(name, config["lora_alpha"]) == r


def test_export_refuses_what_peft_cannot_express(tmp_path, tiny_glue_dir):
    folders = train_runs(tmp_path / "runs", tiny_glue_dir, "tiny", ["lora"], extra=["results.save_adapter=false"])
    with pytest.raises(export.ExportError, match="save_adapter=true"):
        export.export(folders["lora"], tmp_path / "out")
    # the reference reading of DeBERTa (adapter not on the positional query), when the key exists
    cfg = OmegaConf.create({"model": {"positional_query_adapter": False, "target_regex": ".*query_proj"}})
    with pytest.raises(export.ExportError, match="positional query"):
        export.refuse_positional_query(cfg)
    # null on a GLUE task is the reference reading too (models.REFERENCE_POSITIONAL_QUERY_ADAPTER)
    glue = OmegaConf.create({"model": {"family": "deberta", "positional_query_adapter": None,
                                       "target_regex": ".*query_proj"}, "task": {"kind": "glue"}})
    with pytest.raises(export.ExportError, match="positional query"):
        export.refuse_positional_query(glue)
    glue.task.kind = "squad_v2"
    export.refuse_positional_query(glue)


@pytest.mark.slow
def test_round_trip_on_the_pretrained_minilm(tmp_path, tiny_glue_dir):
    """The issue's acceptance on the packaged pretrained MiniLM (HF_HUB_OFFLINE)."""
    from adarank.models import model_location

    folders = train_runs(tmp_path / "runs", tiny_glue_dir, "minilm", list(CASES))
    checked = round_trip(tmp_path, folders, lambda trained, tmp: model_location(trained.cfg.model), merged=("lora",))
    for name, outcome in checked.items():
        metrics = json.loads((folders[name.removesuffix("-merged")] / "metrics.json").read_text())
        assert outcome["diff"] <= 1e-5 and outcome["accuracy"] == metrics["final"]["accuracy"], (name, outcome)
