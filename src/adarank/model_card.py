"""The model card (README.md) of an export (``python -m adarank.export``), in the Hugging Face
layout: YAML metadata the hub reads (library_name, base_model, tags, datasets, pipeline_tag), then
what the adapter is, the run's dev metrics, how exact the export is and how it was made, so that
``huggingface-cli upload`` (or ``push_to_hub``) publishes the folder as it is."""

from __future__ import annotations

import yaml

METHOD_NAMES = {"lora": "LoRA", "adalora": "AdaLoRA", "increlora": "IncreLoRA", "triadapt": "TriAdaptLoRA",
                "dylora": "DyLoRA"}
DATASETS = {"glue": "nyu-mll/glue", "squad_v2": "rajpurkar/squad_v2"}
PIPELINES = {"sequence_classification": "text-classification", "question_answering": "question-answering"}
AUTO_CLASSES = {"sequence_classification": "AutoModelForSequenceClassification",
                "question_answering": "AutoModelForQuestionAnswering"}


def render(summary: dict, cfg, metrics: dict) -> str:
    """README.md of the export whose ``summary`` (adarank_export.json) is given; ``cfg`` and
    ``metrics`` are the run's config.yaml and metrics.json."""
    from adarank.analysis.paper import task_label

    method = METHOD_NAMES.get(summary["method"], summary["method"])
    if summary.get("threshold") and summary["method"] == "triadapt":
        method += f" ({summary['threshold']} threshold)"
    task = str(cfg.task.name)
    kind = str(cfg.task.get("kind", "glue"))
    task_name = ("GLUE " if kind == "glue" else "") + task_label(task)
    base = summary["base_model"]
    front = {
        "library_name": "transformers" if summary["merged"] else "peft",
        **({"base_model": base} if base and "/" in base and not base.startswith("/") else {}),
        "pipeline_tag": PIPELINES.get(summary["head"], summary["head"]),
        "datasets": [DATASETS[kind]] if kind in DATASETS else [],
        "tags": list(dict.fromkeys(["adarank", summary["method"], "lora", task] + ([] if summary["merged"] else ["peft"]))),
    }
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {method} on {task_name}" + (f" ({base})" if base else ""), "",
             f"A {'full model with the low-rank update merged in' if summary['merged'] else 'plain peft LoRA adapter'}, "
             f"trained with {method} by the adarank harness and exported with `python -m adarank.export`.", "",
             "| | |", "|---|---|",
             f"| base model | {base or 'a random DeBERTa (not a released model)'}"
             + (f" (revision {summary['base_revision']})" if summary.get("base_revision") else "")
             + (f"; {summary['base_model_hint']}" if summary.get("base_model_hint") else "") + " |",
             f"| task | {task_name}, {summary['num_labels']} output(s), dev metric {cfg.task.primary_metric} |",
             f"| method | {method}" + (f", exported at rank {summary['dylora_rank']}" if summary.get("dylora_rank") else "") + " |",
             f"| rank pattern | {rank_summary(summary['ranks'])} |",
             f"| trained heads | {', '.join(summary['modules_to_save']) or 'none'} |",
             f"| run | seed {cfg.seed}, config hash `{summary['config_hash']}` |", ""]
    lines += ["## Dev metrics of the run", "", metric_table(metrics), "",
              "The export holds the state at the end of training (the `final` row).", ""]
    lines += ["## Exactness", "", exactness(summary), ""]
    lines += ["## Use", "", "```python", usage(summary), "```", ""]
    lines += ["## How it was made", "",
              f"Training: `python train.py task={task} method={summary['method']}"
              + (f" threshold={summary['threshold']}" if summary.get("threshold") else "")
              + f" model={cfg.model.name} seed={cfg.seed} ...`, the whole resolved configuration in "
              f"`training_config.yaml` (config hash `{summary['config_hash']}`).", "",
              f"Export: `{summary['command']}`", ""]
    return "\n".join(lines)


def rank_summary(ranks: dict[str, int]) -> str:
    counts: dict[int, int] = {}
    for rank in ranks.values():
        counts[rank] = counts.get(rank, 0) + 1
    spread = ", ".join(f"rank {r}: {n} module{'s' if n > 1 else ''}" for r, n in sorted(counts.items()))
    return f"{len(ranks)} adapted modules, total rank {sum(ranks.values())} ({spread}); per module in adarank_export.json"


def metric_table(metrics: dict) -> str:
    rows = {name: metrics.get(name) or {} for name in ("best", "final")}
    keys = [k for k in dict.fromkeys(k for row in rows.values() for k in row) if k != "step"
            and isinstance(rows["final"].get(k, rows["best"].get(k)), (int, float))]
    head = "| evaluation | step | " + " | ".join(keys) + " |"
    out = [head, "|" + "---|" * (len(keys) + 2)]
    for name, row in rows.items():
        cells = [f"{row[k]:.2f}" if isinstance(row.get(k), (int, float)) else "–" for k in keys]
        out.append(f"| {name} | {row.get('step', '–')} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def exactness(summary: dict) -> str:
    if summary["exact"]:
        return (f"The exported model's outputs equal the trained model's within {summary['max_abs_output_difference']:.1e} "
                "(largest |logit difference| on a probe batch, fp32).")
    a = summary["approximation"]
    metric = a["primary_metric"]
    return ("**Approximate export** (`--approximate`). The run was trained with `model.positional_query_adapter=false` "
            "(the GLUE reference setting): its adapter on `query_proj` did not act on DeBERTa's positional query, "
            "while a plain peft LoRA module on `query_proj` does. Measured on the run's own dev set "
            f"({a['examples']} examples): largest |logit difference| between this export and the trained model "
            f"{a['max_abs_logit_difference']:.3e}; dev {metric} {a['exported'][metric]:.2f} with this export, "
            f"{a['trained'][metric]:.2f} as trained.")


def usage(summary: dict) -> str:
    auto = AUTO_CLASSES.get(summary["head"], "AutoModel")
    base = summary["base_model"] or "<the random backbone: adarank.export.fresh_base>"
    labels = f", num_labels={summary['num_labels']}" if summary["head"] == "sequence_classification" else ""
    if summary["merged"]:
        return f"from transformers import {auto}\nmodel = {auto}.from_pretrained(\"<this folder or repo id>\")"
    return (f"from peft import PeftModel\nfrom transformers import {auto}\n"
            f"base = {auto}.from_pretrained(\"{base}\"{labels})\n"
            "model = PeftModel.from_pretrained(base, \"<this folder or repo id>\")")
