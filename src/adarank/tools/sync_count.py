"""Host-device synchronisations per optimizer step, counted through the real training loop.

On a GPU the host queues kernels and runs ahead; it stops and waits for the device whenever it
needs a value or a buffer back (``loss.item()``, ``if tensor:``, ``float(x)``, ``.tolist()``,
``.cpu()``), copies pageable host memory to the device (a blocking ``.to(device)`` /
``copy_``), asks for a result whose size depends on data (``nonzero``, boolean indexing,
``unique``) or synchronises explicitly (``torch.cuda.synchronize``, waiting on an event). Each
such point empties the device's queue. :class:`SyncCounter` counts them per optimizer step.

How. A ``TorchDispatchMode`` sees every ATen operator: ``aten._local_scalar_dense`` is what
``Tensor.item`` / ``__bool__`` / ``__float__`` / ``__int__`` / ``__index__`` dispatch to, and
``_to_copy`` / ``copy_`` between host and device are the copies. On CUDA a tensor's residency
is its device. On CPU (the emulation, so that a test can run anywhere) every tensor lives on
the CPU, so the counter keeps the residency a CUDA run would have: *host* tensors are the data
loader's batches, tensors made from Python data (``torch.tensor``, ``torch.Tensor(list)``:
``aten.lift_fresh``; AdamW's step counters are such tensors, and torch keeps them on the CPU
under CUDA too), factories called without a ``device`` (``torch.randint(...)`` draws on the
CPU under CUDA as well) and whatever is computed from host tensors only; everything else
(parameters, buffers, activations, factories given a device) is *device*. On CPU some calls never reach the dispatcher
(``.to(device)``, ``.cpu()``, ``.tolist()``, ``.numpy()`` of a CPU tensor return at once), so
the emulation also patches those four ``Tensor`` methods; ``torch.cuda.synchronize`` and CUDA
event / stream waits are patched in both modes.

Limits of the emulation: a host->device copy with ``non_blocking=True`` is taken as
asynchronous (on CUDA the counter checks that its source is pinned, which a CPU build cannot
do); an explicit ``.to("cpu")`` of a device tensor is not seen (``.cpu()`` is); code that runs
only on CUDA (``if device.type == "cuda": ...``) does not run. ``make gpu-check`` runs the same
counter on CUDA.

Steps. A new segment starts each time the *training* data loader (the one with a random
sampler) hands out a batch, so ``segments[s]`` holds the syncs of optimizer step ``s``
(1-based: its forward, backward, update, hooks, logging, evaluation and checkpoint) and
``segments[0]`` those before the first batch. Fetching batches (any loader) is host work and is
not counted.

    with SyncCounter("cpu") as counter:
        adarank.run.run(cfg)
    counter.per_step()    # [number of syncs of step 1, step 2, ...]
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: operators whose output size depends on the data: the host must wait for it
DATA_DEPENDENT = {"nonzero", "masked_select", "_unique", "_unique2", "unique_dim", "unique_consecutive",
                  "argwhere", "nonzero_numpy"}
#: factory functions whose result is a CPU tensor in a CUDA run too unless given a ``device``
#: (emulation; any other factory counts as device-resident, so unknown cases are over-counted)
FACTORIES = ("tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "eye", "rand", "randn", "randint",
             "randperm", "linspace")
#: operators that make a tensor from Python data (host memory)
FROM_PYTHON = {"lift_fresh", "lift", "lift_fresh_copy"}
_THIS_FILE = os.path.abspath(__file__)
#: frames skipped when naming where a sync came from: torch itself, this file, context managers
_SKIPPED_PATHS = (os.path.dirname(torch.__file__) + os.sep, _THIS_FILE, contextlib.__file__)


@dataclass(frozen=True)
class Sync:
    """One synchronisation: what (``read``, ``d2h``, ``h2d``, ``shape``, ``explicit``), the
    operator or call, and where in our code it came from (file:line function)."""

    kind: str
    op: str
    where: str


def _caller() -> str:
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_SKIPPED_PATHS):
        frame = frame.f_back
    if frame is None:
        return "?"
    name = frame.f_code.co_filename
    for marker in ("site-packages" + os.sep, "src" + os.sep):
        if marker in name:
            name = name.split(marker, 1)[1]
            break
    return f"{name}:{frame.f_lineno} {frame.f_code.co_name}"


class SyncCounter(TorchDispatchMode):
    """Counts host-device syncs per optimizer step (see the module docstring).

    ``device``: the training device (``cpu`` = the emulation of a CUDA run's residency).
    """

    def __init__(self, device: str | torch.device = "cpu"):
        super().__init__()
        self.device = torch.device(device)
        self.emulate = self.device.type == "cpu"
        self.segments: list[list[Sync]] = [[]]
        self._host: dict[int, weakref.ref] = {}  # emulation: id -> tensor of the host tensors
        self._quiet = threading.local()
        self._saved: list[tuple] = []

    # -- residency -----------------------------------------------------------------------------
    def is_host(self, tensor: torch.Tensor) -> bool:
        if not self.emulate:
            return tensor.device.type == "cpu"
        for t in (tensor, tensor._base):
            ref = self._host.get(id(t)) if t is not None else None
            if ref is not None and ref() is t:
                return True
        return False

    def _set_host(self, tensor, host: bool = True) -> None:
        if not (self.emulate and isinstance(tensor, torch.Tensor)):
            return
        key = id(tensor)
        if not host:
            self._host.pop(key, None)
            return
        table = self._host

        def forget(ref, key=key):
            if table.get(key) is ref:
                del table[key]

        table[key] = weakref.ref(tensor, forget)

    def _mark_tree(self, value, host: bool = True) -> None:
        if isinstance(value, torch.Tensor):
            self._set_host(value, host)
        elif isinstance(value, dict):
            for item in value.values():
                self._mark_tree(item, host)
        elif isinstance(value, (list, tuple)):
            for item in value:
                self._mark_tree(item, host)

    # -- recording -----------------------------------------------------------------------------
    @property
    def quiet(self) -> bool:
        return getattr(self._quiet, "depth", 0) > 0

    @contextlib.contextmanager
    def host_work(self):
        """A region of host-side work (fetching a batch): nothing in it counts, everything it
        makes is a host tensor."""
        self._quiet.depth = getattr(self._quiet, "depth", 0) + 1
        try:
            yield
        finally:
            self._quiet.depth -= 1

    def record(self, kind: str, op: str) -> None:
        if not self.quiet:
            self.segments[-1].append(Sync(kind, op, _caller()))

    def new_step(self) -> None:
        self.segments.append([])

    # -- results -------------------------------------------------------------------------------
    def per_step(self) -> list[int]:
        """Syncs of optimizer steps 1, 2, ... (segment 0, before the first batch, left out)."""
        return [len(s) for s in self.segments[1:]]

    def where(self, steps) -> Counter:
        """{(kind, op, where): count} over the given 1-based steps."""
        return Counter((s.kind, s.op, s.where) for step in steps for s in self.segments[step])

    # -- the dispatcher's view -----------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        tensors = [a for a in _flat(args, kwargs) if isinstance(a, torch.Tensor)]
        if not self.quiet:
            self._check(func, name, args, kwargs, tensors)
        out = func(*args, **kwargs)
        if self.emulate and (self.quiet or name in FROM_PYTHON or (tensors and all(map(self.is_host, tensors)))):
            self._mark_tree(out)
        return out

    def _check(self, func, name, args, kwargs, tensors) -> None:
        if name == "_local_scalar_dense":
            if not self.is_host(args[0]):
                self.record("read", "item/bool/float/int")
        elif name in DATA_DEPENDENT or (name == "repeat_interleave" and kwargs.get("output_size") is None
                                        and isinstance(args[0], torch.Tensor) and args[0].dim() > 0):
            if tensors and not self.is_host(tensors[0]):
                self.record("shape", name)
        elif name in ("index", "index_put", "index_put_") and _has_bool_index(args):
            if not self.is_host(args[0]):
                self.record("shape", f"{name} (boolean mask)")
        elif name == "_to_copy" and not self.emulate and "device" in kwargs and kwargs["device"] is not None:
            self._copy(args[0], torch.device(kwargs["device"]), bool(kwargs.get("non_blocking")), name)
        elif name == "copy_":
            dst, src = args[0], args[1]
            non_blocking = bool(args[2]) if len(args) > 2 else bool(kwargs.get("non_blocking"))
            if self.emulate:
                if self.is_host(src) and not self.is_host(dst) and not non_blocking:
                    self.record("h2d", "copy_")
            else:
                self._copy(src, dst.device, non_blocking, name)

    def _copy(self, src: torch.Tensor, target: torch.device, non_blocking: bool, op: str) -> None:
        """A real (CUDA) copy between host and device."""
        if src.device.type == "cpu" and target.type != "cpu":
            if not (non_blocking and src.is_pinned()):
                self.record("h2d", op)
        elif src.device.type != "cpu" and target.type == "cpu" and not non_blocking:
            self.record("d2h", op)

    # -- patches -------------------------------------------------------------------------------
    def __enter__(self):
        self._patch_loader()
        self._patch_cuda()
        if self.emulate:
            self._patch_tensor_methods()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for owner, name, original in reversed(self._saved):
                setattr(owner, name, original)
            self._saved.clear()

    def _replace(self, owner, name: str, make) -> None:
        original = getattr(owner, name)
        self._saved.append((owner, name, original))
        setattr(owner, name, make(original))

    def _patch_loader(self) -> None:
        from torch.utils.data import DataLoader, RandomSampler
        from torch.utils.data.dataloader import _BaseDataLoaderIter

        counter = self

        def make_iter(original):
            def __iter__(self):
                with counter.host_work():  # draws the workers' base seed on the CPU
                    return original(self)

            return __iter__

        self._replace(DataLoader, "__iter__", make_iter)

        def make(original):
            def __next__(self):
                with counter.host_work():
                    batch = original(self)  # StopIteration at an epoch's end: no new step
                counter._mark_tree(batch)
                sampler = getattr(getattr(self, "_index_sampler", None), "sampler", None)
                if isinstance(sampler, RandomSampler):
                    counter.new_step()
                return batch

            return __next__

        self._replace(_BaseDataLoaderIter, "__next__", make)

    def _patch_cuda(self) -> None:
        counter = self

        def explicit(label):
            def make(original):
                def wrapped(*args, **kwargs):
                    counter.record("explicit", label)
                    return original(*args, **kwargs)

                return wrapped

            return make

        self._replace(torch.cuda, "synchronize", explicit("torch.cuda.synchronize"))
        self._replace(torch.cuda.Event, "synchronize", explicit("Event.synchronize"))
        self._replace(torch.cuda.Stream, "synchronize", explicit("Stream.synchronize"))

    def _patch_tensor_methods(self) -> None:
        counter = self
        device_type = self.device.type

        def reader(label, kind):
            def make(original):
                def wrapped(tensor, *args, **kwargs):
                    if not counter.is_host(tensor):
                        counter.record(kind, label)
                    return original(tensor, *args, **kwargs)

                return wrapped

            return make

        def make_to(original):
            def to(tensor, *args, **kwargs):
                target, _, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
                host = counter.is_host(tensor)
                out = original(tensor, *args, **kwargs)
                if target is not None and target.type == device_type and host:
                    if not non_blocking:
                        counter.record("h2d", ".to(device)")
                    counter._set_host(out, False)  # the copy lives on the device
                return out

            return to

        def factory(name):
            def make(original):
                def wrapped(*args, **kwargs):
                    out = original(*args, **kwargs)
                    target = kwargs.get("device")
                    if target is None:
                        counter._set_host(out)  # no device given: a CPU tensor in a CUDA run too
                    elif torch.device(target).type == device_type:
                        if name in ("tensor", "as_tensor"):  # Python data copied to the device
                            counter.record("h2d", f"torch.{name}(..., device=)")
                        counter._set_host(out, False)
                    return out

                return wrapped

            return make

        for name in FACTORIES:
            self._replace(torch, name, factory(name))
        self._replace(torch.Tensor, "tolist", reader(".tolist()", "d2h"))
        self._replace(torch.Tensor, "numpy", reader(".numpy()", "d2h"))
        self._replace(torch.Tensor, "cpu", reader(".cpu()", "d2h"))
        self._replace(torch.Tensor, "to", make_to)


def _flat(args, kwargs):
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, (list, tuple)):
            yield from value
        else:
            yield value


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def ordinary_steps(total_steps: int, log_interval: int, eval_interval: int, event_steps=(), checkpoint_steps=()) -> list[int]:
    """The 1-based optimizer steps of a run that neither log, evaluate, checkpoint nor hold a rank
    event (growth / masking at 0-based step t is 1-based step t + 1), and are not the last."""
    special = {1, total_steps, *(t + 1 for t in event_steps), *checkpoint_steps}
    return [s for s in range(1, total_steps + 1)
            if s not in special and s % log_interval and s % eval_interval]


# -- the per-method measurement the test, the docs and make gpu-check share --------------------
#: every method / threshold arm: (method, threshold, method-specific overrides)
ARMS = {
    "full": ("full", "none", []),
    "bitfit": ("bitfit", "none", []),
    "hadapter": ("hadapter", "none", []),
    "lora": ("lora", "none", []),
    "adalora": ("adalora", "none", []),
    "increlora": ("increlora", "fixed", []),
    "triadapt-fixed": ("triadapt", "fixed", []),
    "triadapt-linear": ("triadapt", "linear", []),
    "triadapt-nonlinear": ("triadapt", "nonlinear", []),
    "dylora": ("dylora", "none", []),
    "alora": ("alora", "none", ["method.val_examples=8", "method.rounds=2", "method.k1_steps=4", "method.k2_steps=6"]),
}
#: the measured run: 24 steps of batch 4 on the tiny model (48 training rows: 2 epochs, ALoRA's
#: held-out 8 rows aside), growth / masking inside the window; AdaLoRA's last mask at step 17
#: (0-based), so that steps 19-23 (1-based) run after it
MEASURED_STEPS = 24
LOG_INTERVAL = 10
SCHEDULE = [
    "task=rte", "task.batch_size=4", "task.warmup_steps=2", "task.init_warmup=2", "task.incre_interval=4",
    "task.adalora.init_warmup=3", "task.adalora.final_warmup=8", "task.adalora.mask_interval=3",
    "task.adalora.warmup_steps=2", "task.adalora.warmup_ratio=null",
    f"train.max_steps={MEASURED_STEPS}", f"train.log_interval={LOG_INTERVAL}", "train.eval_interval=1000",
    "train.checkpoint_interval=0", "train.progress=off", "train.eval_batch_size=32", "force=true",
]


CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


def arm_overrides(arm: str, data_dir, results_root, device: str = "cpu", extra=()) -> list[str]:
    """The overrides of one measured run; a key given again later (``extra``) replaces the earlier."""
    method, threshold, own = ARMS[arm]
    items = ["model=tiny", f"method={method}", f"threshold={threshold}", f"data.dir={data_dir}",
             f"results.root={results_root}", f"train.device={device}", *SCHEDULE, *own, *extra]
    return [f"{key}={value}" for key, value in dict(item.split("=", 1) for item in items).items()]


def measure_arm(arm: str, data_dir, results_root, device: str = "cpu", extra=()) -> dict:
    """Train ``arm`` through ``adarank.run.run`` under a :class:`SyncCounter`; return the syncs per
    step, the rank-event steps, the ordinary steps and where the ordinary steps' syncs came from."""
    import json

    from hydra import compose, initialize_config_dir

    from adarank.run import run

    overrides = arm_overrides(arm, data_dir, results_root, device, extra)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with SyncCounter(device) as counter:
        metrics = run(cfg, overrides)
    (folder,) = Path(results_root).glob(f"*/*/seed*/{metrics['variant']}")  # the variant: a unique name
    events = [json.loads(line)["step"] for line in (folder / "growth_log.jsonl").read_text().splitlines()]
    steps = int(metrics["costs"]["optimizer_steps"])
    # the loop draws one batch more when the run ends inside an epoch: that fetch opens a last
    # segment, which belongs to the final step (its evaluation)
    per_step = counter.per_step()[:steps]
    per_step[-1] += sum(counter.per_step()[steps:])
    ordinary = ordinary_steps(len(per_step), LOG_INTERVAL, 1000, events)
    return {
        "arm": arm,
        "device": device,
        "per_step": per_step,
        "event_steps": [t + 1 for t in events],
        "ordinary_steps": ordinary,
        "max_ordinary": max((per_step[s - 1] for s in ordinary), default=None),
        "where_ordinary": [[n, *key] for key, n in counter.where(ordinary).most_common()],
        "where_other": [[n, *key] for key, n in counter.where(
            [s for s in range(1, len(per_step) + 1) if s not in ordinary]).most_common()],
        "status": metrics["status"],
    }
