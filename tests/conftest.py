"""Shared fixtures: Hydra configs composed from conf/, a tiny synthetic GLUE folder, real data paths.

Everything runs offline: the hub is never contacted (HF_HUB_OFFLINE), wandb is disabled unless a
test turns it on, and models are the random tiny DeBERTaV2 (or the packaged MiniLM).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tiny models gain nothing from intra-op threads, and spinning OpenMP threads of parallel test
# workers (pytest -n 2) fight for the same cores; subprocesses inherit the setting
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after the environment is set)

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SHARED_GLUE = REPO.parent / "shared" / "data" / "glue"

CLUSTER_TESTS = "tests/cluster/"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist: every test in tests/cluster/ on one worker, so one session-scoped SLURM
    cluster serves them all (two workers would start two clusters); the other tests are spread
    one by one as with ``--dist load``. (xdist's own ``--dist loadgroup`` does not work with
    pytest 9.2: the group suffix xdist 3.8 appends to node ids is ignored.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ClusterTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return CLUSTER_TESTS if nodeid.startswith(CLUSTER_TESTS) else nodeid

    return ClusterTestsTogether(config, log)


# what every in-process test run uses unless the test overrides it
FAST_DEFAULTS = {
    "model": "tiny",
    "train.max_steps": "4",
    # Table V's 100-step LR warm-up would fill a 4-step run, which run() refuses
    "task.warmup_steps": "0",
    "train.progress": "off",
    "train.eval_batch_size": "32",
}


def compose(overrides: list[str]):
    """The config ``python train.py <overrides>`` would run with."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def merge_overrides(defaults: dict, overrides: list[str]) -> list[str]:
    """Later keys win; Hydra itself refuses the same key twice."""
    merged = dict(defaults)
    for item in overrides:
        key, _, value = item.partition("=")
        merged[key] = value
    return [f"{k}={v}" for k, v in merged.items()]


def assert_same_training_state(model_a, optimizer_a, model_b, optimizer_b) -> None:
    """Two training runs ended bit-identical: every parameter and its optimizer state."""
    params_a, params_b = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    assert params_a.keys() == params_b.keys()
    for name, param in params_a.items():
        assert torch.equal(param, params_b[name]), name
        state_a, state_b = optimizer_a.state.get(param, {}), optimizer_b.state.get(params_b[name], {})
        assert state_a.keys() == state_b.keys(), name
        for key in state_a:
            a, b = state_a[key], state_b[key]
            same = torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b  # LegacyAdamW's step is an int
            assert same, (name, key)


@pytest.fixture
def make_cfg(tmp_path, tiny_glue_dir):
    """make_cfg([...overrides]) -> (cfg, overrides): a fast tiny-model config writing under tmp_path."""

    def make(overrides: list[str] = ()):
        defaults = {
            **FAST_DEFAULTS,
            "data.dir": str(tiny_glue_dir),
            "results.root": str(tmp_path / "results"),
        }
        final = merge_overrides(defaults, list(overrides))
        return compose(final), final

    return make


# --- a tiny synthetic GLUE folder in the classic layout -------------------------------------------
WORDS = "alpha beta gamma delta river stone cloud green small quick bright heavy".split()


def _sentence(rng: random.Random, marker: str | None) -> str:
    words = rng.sample(WORDS, 5)
    if marker:
        words.insert(rng.randrange(len(words)), marker)
    return " ".join(words) + " ."


def _rows(task: str, n: int, rng: random.Random) -> tuple[list[str] | None, list[list[str]]]:
    """Header and rows; the label is carried by a marker word, so a model can learn it."""
    rows = []
    for i in range(n):
        label = i % 2
        a = _sentence(rng, "yes" if label else "no")
        b = _sentence(rng, None)
        if task == "cola":
            rows.append(["src", str(label), "*" if not label else "", a])
        elif task == "sst2":
            rows.append([a, str(label)])
        elif task == "mrpc":
            rows.append([str(label), str(1000 + i), str(2000 + i), a, b])
        elif task == "stsb":
            rows.append([str(i), "main", "f", "2012", f"{i:04d}", "none", "none", a, b, f"{label * 4 + 0.5:.3f}"])
        elif task == "qqp":
            rows.append([str(i), str(2 * i), str(2 * i + 1), a, b, str(label)])
        elif task == "mnli":
            gold = ["entailment", "neutral", "contradiction"][i % 3]
            rows.append([str(i), "0", "0", "fiction", "x", "x", "x", "x", a, b, gold, gold])
        elif task == "qnli":
            rows.append([str(i), a, b, ["entailment", "not_entailment"][label]])
        else:  # rte
            rows.append([str(i), a, b, ["entailment", "not_entailment"][label]])
    headers = {
        "cola": None,
        "sst2": ["sentence", "label"],
        "mrpc": ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        "stsb": ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"],
        "qqp": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        "mnli": ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                 "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"],
        "qnli": ["index", "question", "sentence", "label"],
        "rte": ["index", "sentence1", "sentence2", "label"],
    }
    return headers[task], rows


FOLDERS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP",
           "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE"}


def write_tiny_glue(root: Path, train_rows: int = 48, dev_rows: int = 24) -> Path:
    rng = random.Random(0)
    for task, folder in FOLDERS.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        dev_files = ["dev_matched.tsv", "dev_mismatched.tsv"] if task == "mnli" else ["dev.tsv"]
        for name, n in [("train.tsv", train_rows)] + [(f, dev_rows) for f in dev_files]:
            header, rows = _rows(task, n, rng)
            lines = ([header] if header else []) + rows
            (root / folder / name).write_text("".join("\t".join(r) + "\n" for r in lines))
    return root


@pytest.fixture(scope="session")
def tiny_glue_dir(tmp_path_factory) -> Path:
    return write_tiny_glue(tmp_path_factory.mktemp("glue"))


@pytest.fixture
def real_glue_dir() -> Path:
    if not (SHARED_GLUE / "RTE" / "train.tsv").is_file():
        pytest.skip(f"real GLUE data not found at {SHARED_GLUE}")
    return SHARED_GLUE
