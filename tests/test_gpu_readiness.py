"""GPU readiness, proved on the CPU (issue 23): deferred divergence checks, per-run peak memory,
the CUDA RNG of the run's own device, the loud CPU fallback, deterministic mode, the data loader
with workers, multi-tensor AdamW, AdaLoRA's device masks, the precision policy and its config keys."""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import pytest
import torch

from adarank import results
from adarank.checks import ConfigError, check_static
from adarank.run import run
from adarank.training import checkpoint, precision
from adarank.training.batches import TrainBatches
from adarank.training.loop import pick_device
from adarank.training.step_watch import Diverged, LossWatch, peak_memory_mb, reset_peak_memory
from tests.conftest import compose


def run_folder(cfg) -> Path:
    (folder,) = [p for p in Path(cfg.results.root).glob("*/*/seed*/*") if not p.name.startswith(".")]
    return folder


# -- divergence seen at the next check (item 5) --------------------------------------------------
def test_loss_watch_reads_pending_losses_and_finds_the_first_non_finite_one():
    watch = LossWatch()
    for step, value in enumerate([0.7, 0.6], start=1):
        watch.add(step, torch.tensor(value))
    assert watch.check() == pytest.approx({1: 0.7, 2: 0.6})
    for step, value in ((3, 0.5), (4, float("nan")), (5, float("inf"))):
        watch.add(step, torch.tensor(value))
    with pytest.raises(Diverged) as caught:
        watch.check()
    assert caught.value.step == 4 and caught.value.detected_at == 5
    assert caught.value.last_finite_loss == pytest.approx(0.5) and math.isnan(caught.value.loss)


def test_a_divergence_between_checks_is_recorded_with_its_step_range(make_cfg):
    """The loss is read at log steps (1, 5, ...): a NaN at step 2 is seen at step 5, and the run
    records both, with the 5 steps it took."""
    cfg, overrides = make_cfg(["method=bitfit", "train.max_steps=8", "train.log_interval=5", "task.lr=1e30"])
    metrics = run(cfg, overrides)
    assert metrics["status"] == "diverged"
    diverged = metrics["diverged"]
    assert 2 <= diverged["step"] < diverged["detected_at_step"] == 5, diverged
    assert math.isfinite(diverged["last_finite_loss"]) and metrics["costs"]["optimizer_steps"] == 5
    logged = [json.loads(line) for line in (run_folder(cfg) / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1] and math.isfinite(logged[0]["loss"])  # nothing non-finite logged
    assert results.validate_run_folder(run_folder(cfg)) == []


# -- peak memory of each run, not of the process (bug 2) -----------------------------------------
def test_reset_starts_the_peak_from_now():
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB
    big.add_(1)
    del big
    before = peak_memory_mb(torch.device("cpu"))
    assert reset_peak_memory(torch.device("cpu"))
    assert peak_memory_mb(torch.device("cpu")) < before - 32


def test_two_jobs_in_one_worker_report_their_own_peaks(make_cfg):
    """A reused joblib worker (the local GPU launcher, make mini): a large job, then a small one in
    the same process. The small one's peak is its own, far below the large one's (before the fix
    it was the process's high-water mark, i.e. the large job's)."""
    big, big_overrides = make_cfg(["method=full", "model.hidden_size=384", "model.intermediate_size=1536",
                                   "model.num_heads=6", "train.max_steps=2", "task.batch_size=32"])
    small, small_overrides = make_cfg(["method=bitfit", "train.max_steps=2", "seed=1"])
    first = run(big, big_overrides)["costs"]["peak_memory_mb"]
    second = run(small, small_overrides)["costs"]["peak_memory_mb"]
    assert second < first - 100, (first, second)


# -- CUDA RNG of the run's own device (bug 1), with a stand-in for torch.cuda ----------------------
class FakeCuda:
    """The torch.cuda functions capture_rng / restore_rng use, on a machine with ``count`` GPUs."""

    def __init__(self, count: int, current: int):
        self.count, self.current, self.restored = count, current, []

    def install(self, monkeypatch):
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: self.count > 0)
        monkeypatch.setattr(cuda, "is_initialized", lambda: self.count > 0)
        monkeypatch.setattr(cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(cuda, "get_rng_state", lambda device="cuda": torch.tensor([100 + self.current]))
        monkeypatch.setattr(cuda, "get_rng_state_all", lambda: [torch.tensor([100 + i]) for i in range(self.count)])
        monkeypatch.setattr(cuda, "set_rng_state", lambda state, device="cuda": self.restored.append(int(state[0])))
        monkeypatch.setattr(cuda, "set_rng_state_all", lambda states: pytest.fail("restores by index"))


def test_a_checkpoint_holds_only_the_runs_own_cuda_rng(monkeypatch):
    FakeCuda(count=4, current=2).install(monkeypatch)
    state = checkpoint.capture_rng()
    assert torch.equal(state["cuda"], torch.tensor([102]))  # device 2's, not a list of 4


@pytest.mark.parametrize("count, current, saved, expected", [
    (1, 0, [torch.tensor([102])], 102),  # written as one state (this version) on cuda:2, resumed on cuda:0
    (1, 0, [[torch.tensor([100 + i]) for i in range(4)]], 100),  # an older checkpoint of 4 GPUs, 1 visible
    (2, 1, [[torch.tensor([100 + i]) for i in range(4)]], 101),  # ... resumed as cuda:1: its own entry
    (8, 5, [[torch.tensor([100 + i]) for i in range(4)]], 100),  # more devices now than then: the first
])
def test_resume_restores_the_current_device_whatever_was_visible(monkeypatch, count, current, saved, expected):
    fake = FakeCuda(count, current)
    fake.install(monkeypatch)
    state = {**checkpoint.capture_rng(), "cuda": saved[0]}
    checkpoint.restore_rng(state)
    assert fake.restored == [expected]


def test_resume_without_cuda_skips_the_cuda_rng(monkeypatch, caplog):
    state = {**checkpoint.capture_rng(), "cuda": torch.tensor([7])}
    FakeCuda(count=0, current=0).install(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="adarank"):
        checkpoint.restore_rng(state)
    assert "no CUDA device" in caplog.text


# -- a CUDA build on the CPU says why (bug 3) -------------------------------------------------------
def fake_broken_cuda(monkeypatch, message: str | None):
    def is_available():
        if message:
            warnings.warn(message, UserWarning)
        return False

    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    monkeypatch.setattr(torch.version, "cuda", "12.8")


def test_auto_on_a_cuda_build_without_a_usable_gpu_warns_once_with_the_reason(monkeypatch, caplog):
    fake_broken_cuda(monkeypatch, "CUDA initialization: The NVIDIA driver on your system is too old (found version 11040)")
    with caplog.at_level(logging.WARNING, logger="adarank"):
        assert pick_device("auto") == torch.device("cpu")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "driver on your system is too old" in lines[0] and "\n" not in lines[0]
    with pytest.raises(RuntimeError, match="too old"):
        pick_device("cuda")


def test_auto_names_a_hidden_gpu_and_a_cpu_build_stays_quiet(monkeypatch, caplog):
    fake_broken_cuda(monkeypatch, None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with caplog.at_level(logging.WARNING, logger="adarank"):
        pick_device("auto")
    assert "CUDA_VISIBLE_DEVICES=''" in caplog.text
    caplog.clear()
    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU build: nothing to warn about
    with caplog.at_level(logging.WARNING, logger="adarank"):
        assert pick_device("auto") == torch.device("cpu")
    assert not caplog.records


# -- deterministic mode and TF32 (bug 4, item 9) ---------------------------------------------------
def test_deterministic_mode_sets_and_clears_the_flags(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        precision.configure(torch.device("cuda"), tf32=False, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert __import__("os").environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.backends.cuda.matmul.allow_tf32 is False
        precision.configure(torch.device("cuda"), tf32=True, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        precision.configure(torch.device("cpu"), tf32=True, deterministic=False)
        torch.backends.cuda.matmul.allow_tf32 = tf32


def test_a_deterministic_cpu_run_equals_the_default_one(make_cfg):
    plain, plain_overrides = make_cfg(["method=lora"])
    det, det_overrides = make_cfg(["method=lora", "train.deterministic=true", "results.root=" + str(
        Path(plain.results.root).parent / "det")])
    a, b = run(plain, plain_overrides), run(det, det_overrides)
    assert (a["best"], a["final"]) == (b["best"], b["final"])
    assert not torch.are_deterministic_algorithms_enabled()  # put back when the run ended


# -- the new config keys: checked up front, hash-neutral at their old meaning --------------------
@pytest.mark.parametrize("override, message", [
    ("train.tf32=maybe", "train.tf32 must be true or false"),
    ("train.deterministic=1", "train.deterministic must be true or false"),
    ("train.num_workers=-1", "train.num_workers must be auto or an integer >= 0"),
    ("train.num_workers=many", "train.num_workers must be auto or an integer >= 0"),
    ("train.pad_to_multiple_of=0", "train.pad_to_multiple_of must be a positive integer or null"),
])
def test_bad_values_of_the_new_keys_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        check_static(compose(["task=rte", "method=lora", override]))


def test_new_keys_keep_recorded_hashes_and_separate_what_changes_numbers():
    base = results.config_hash(compose(["task=rte", "method=lora"]))
    assert base == "88fdfa56"  # recorded (tests/test_run_identity.py)
    for same in ("train.tf32=true", "train.deterministic=true", "train.num_workers=2", "train.num_workers=auto",
                 "train.pad_to_multiple_of=null"):
        assert results.config_hash(compose(["task=rte", "method=lora", same])) == base, same
    for other in ("train.tf32=false", "train.pad_to_multiple_of=8"):
        assert results.config_hash(compose(["task=rte", "method=lora", other])) != base, other


def test_pad_to_multiple_of_pads_every_batch(make_cfg):
    cfg, overrides = make_cfg(["method=lora", "train.pad_to_multiple_of=8"])
    from adarank.data import build_task_data
    from adarank.models import load_tokenizer

    data = build_task_data(cfg.task, cfg.data, cfg.train, load_tokenizer(cfg.model, None))
    widths = {data.collate([data.train_dataset[i] for i in range(j, j + 4)])["input_ids"].shape[1] for j in range(0, 40, 4)}
    assert widths and all(w % 8 == 0 for w in widths)
    assert run(cfg, overrides)["status"] == "completed"


# -- data loader workers (item 8) -------------------------------------------------------------------
def loader_batches(workers: int, epochs: int = 3) -> list[list[int]]:
    data = [{"x": torch.tensor([i])} for i in range(10)]
    collate = lambda items: torch.cat([item["x"] for item in items])  # noqa: E731
    batches = TrainBatches(data, 4, torch.Generator().manual_seed(3), collate, torch.device("cpu"), workers)
    return [[batch.tolist() for batch in batches.epoch()] for _ in range(epochs)]


def test_batches_with_workers_equal_those_without_over_several_epochs():
    assert loader_batches(2) == loader_batches(0)


def test_persistent_workers_alone_would_change_the_later_epochs():
    """Why TrainBatches draws the workers' seed itself (training/batches.py): a plain persistent
    loader skips that draw after the first epoch, and its later permutations differ."""
    data = list(range(10))
    plain = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3),
                                             num_workers=workers, persistent_workers=workers > 0)
        plain[workers] = [[b.tolist() for b in loader] for _ in range(3)]
    assert plain[0][0] == plain[2][0] and plain[0][1:] != plain[2][1:]


def test_training_with_loader_workers_gives_the_same_numbers(make_cfg, tmp_path):
    """3 epochs of the tiny GLUE data (6 batches of 8 each), every loss logged."""
    runs = []
    for workers in (0, 2):
        cfg, overrides = make_cfg(["method=triadapt", "threshold=linear", "task.batch_size=8", "train.max_steps=15",
                                   "task.init_warmup=2", "task.incre_interval=3", "train.log_interval=1",
                                   f"train.num_workers={workers}", f"results.root={tmp_path / str(workers)}"])
        metrics = run(cfg, overrides)
        runs.append((metrics["best"], metrics["final"], (run_folder(cfg) / "train_log.jsonl").read_text(),
                     (run_folder(cfg) / "growth_log.jsonl").read_text()))
    assert runs[0] == runs[1]
    assert len(runs[0][2].splitlines()) >= 15


# -- AdamW: multi-tensor where bit-identical, int step counts (item 7) ---------------------------
def adamw_run(factory, steps: int = 12) -> list[torch.Tensor]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in ((16, 8), (8,), (4, 64), (64, 4), (1,))]
    optimizer = factory([{"params": params[:3], "weight_decay": 0.01}, {"params": params[3:], "weight_decay": 0.0}])
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        for i, p in enumerate(params):
            p.grad = None if (i == 2 and step % 3 == 1) else torch.randn(p.shape, generator=gen) * 10.0 ** (i - 2)
        optimizer.step()
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * (1 - step / 20)
    return params


def test_torch_adamw_foreach_is_bit_identical_to_its_loop():
    loop = adamw_run(lambda g: torch.optim.AdamW(g, lr=1e-3, eps=1e-8, foreach=False))
    multi = adamw_run(lambda g: torch.optim.AdamW(g, lr=1e-3, eps=1e-8, foreach=True))
    assert all(torch.equal(a, b) for a, b in zip(loop, multi))


def test_build_optimizer_uses_the_multi_tensor_kernels():
    from adarank.training.optim import build_optimizer

    p = torch.nn.Parameter(torch.zeros(2))
    for name in ("adamw_legacy", "adamw_torch"):
        assert build_optimizer([{"params": [p]}], 0.1, name).param_groups[0]["foreach"] is True


# -- AdaLoRA's final masks on the device (item 6) -----------------------------------------------
def test_adalora_device_masks_train_exactly_as_peft_masking():
    """Past the final mask, the masks built once on the device give the same parameters, bit for
    bit, as peft's mask_using_rank_pattern (a mask from a Python list per module and step)."""
    from tests.test_adalora import batch, build

    finals = []
    for peft_path in (False, True):
        total = 20
        method, model, optimizer, scheduler = build(total, init_warmup=3, final_warmup=8, mask_interval=3, warmup_steps=2)
        if peft_path:
            allocator = method.tuner.rankallocator
            method._apply_final_pattern = lambda: allocator.mask_using_rank_pattern(
                method.tuner.model, method.peft_config.rank_pattern)
        from adarank.training.loop import optimization_step

        model.train()
        for step in range(total):
            loss = model(**batch(step)).loss + method.extra_loss(model)
            optimization_step(method, model, optimizer, scheduler, loss, step, total, 1.0)
        finals.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    assert finals[0].keys() == finals[1].keys()
    assert all(torch.equal(finals[0][n], finals[1][n]) for n in finals[0])
    kept = sum(int((p != 0).sum()) for n, p in finals[0].items() if ".lora_E." in n)
    assert kept == 8 * 12  # the target budget, 8 ranks x 12 modules, held to the end


# -- the precision policy (item 9) ----------------------------------------------------------------
def test_orthogonal_penalty_is_fp32_under_bf16_autocast():
    from adarank.methods.orthogonal import gram_orth_penalty

    torch.manual_seed(0)
    pairs = [(torch.randn(8, 64) * 0.1, torch.randn(32, 8) * 0.1) for _ in range(3)]
    exact = gram_orth_penalty(pairs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = gram_orth_penalty(pairs)
    assert under.dtype == torch.float32 and torch.equal(under, exact)


def test_increlora_scores_in_the_training_precision():
    """Under bf16 autocast the scoring hook keeps the layer input in bf16 (no fp32 copy) and its
    dL/dDeltaW GEMM runs in bf16; the score itself is summed in fp32 and stays close to fp32's."""
    from adarank.methods.increlora.layer import IncreLinear

    torch.manual_seed(0)
    layer = IncreLinear(torch.nn.Linear(64, 48), init_rank=4, alpha=16.0)
    with torch.no_grad():
        layer.lora_E[0].fill_(0.5)
    x = torch.randn(6, 10, 64)
    seen, scores = [], []
    make = layer._make_score_hook
    layer._make_score_hook = lambda xd: (seen.append(xd.dtype), make(xd))[1]
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = layer(x)
        out.float().pow(2).sum().backward()
        scores.append(float(layer.score))
    assert seen == [torch.float32, torch.bfloat16]
    assert layer.score.dtype == torch.float32
    assert scores[1] == pytest.approx(scores[0], rel=5e-2)


def test_evaluation_runs_in_the_training_precision():
    calls = []

    class Evaluator:
        dev_examples = 9

        def __call__(self, model, device, final=True):
            calls.append(torch.is_autocast_enabled("cpu"))
            return {"accuracy": 1.0}

    for name in ("fp32", "bf16"):
        evaluate = precision.InPrecision(Evaluator(), name)
        assert evaluate(None, torch.device("cpu"), final=True) == {"accuracy": 1.0}
        assert evaluate.dev_examples == 9  # the wrapped evaluator's attributes
    assert calls == [False, True]
