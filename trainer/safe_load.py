"""Loading checkpoint files without running them: ``torch.load(weights_only=True)`` and a named allow-list.

A ``.pt`` file is a pickle: ``torch.load(weights_only=False)`` (what DeepSpeed's ``TorchCheckpointEngine.load``
does) runs whatever callable the file names, so a crafted ``mp_rank_00_model_states.pt`` in a copied or
shared run directory executes code in every rank that resumes from it — the manifest's hashes do not help,
whoever wrote the file can write the manifest too. Here every checkpoint file is unpickled with
``weights_only=True``: tensors, containers and plain values, plus the classes named below and nothing else:

- :data:`DEEPSPEED_GLOBALS`: the three DeepSpeed classes its optimizer files pickle (ZeRO-1, and a bf16
  ZeRO-0 engine file), and :data:`MEGATRON_GLOBALS`: ``argparse.Namespace``, Megatron's ``args`` in every
  engine file — together :data:`ENGINE_GLOBALS`, the one list, also used by ``bigops.checkpoint.dsfiles``;
- :data:`NUMPY_RNG_GLOBALS`: what NumPy's generator state in our ``rng_state_rank*.pt`` needs (an array of
  uint32 and its dtype).

:class:`SafeCheckpointEngine` is the checkpoint engine DeepSpeed uses for our runs (:func:`install` puts it
on the engine): saves go to DeepSpeed's own engine unchanged; loads come here. A refused or unreadable file
raises :class:`trainer.checkpoint.CheckpointError` with one line (exit code CHECKPOINT_ERROR).
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

from trainer.checkpoint import CheckpointError

DEEPSPEED_GLOBALS = (
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
)
"""Classes DeepSpeed pickles into its checkpoint files (optimizer state), by their import path."""
NUMPY_RNG_GLOBALS = ("numpy._core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
                     "numpy.dtypes.UInt32DType")
"""What ``numpy.random.get_state()`` pickles (numpy 2; ``_reconstruct`` only builds an ndarray)."""
MEGATRON_GLOBALS = ("argparse.Namespace", *NUMPY_RNG_GLOBALS)
"""What Megatron-DeepSpeed's engine files pickle besides: ``args``, a Namespace of plain values (ours too, see
``trainer.layout.megatron_args``; unpickling one sets attributes from a dict, it calls nothing), and its
``np_rng_state`` (NumPy's generator state, as in our ``rng_state_rank*.pt``)."""
ENGINE_GLOBALS = DEEPSPEED_GLOBALS + MEGATRON_GLOBALS
"""The allow-list of every model, engine and optimizer file."""


def resolve(names) -> list:
    """The objects named ``module.attr`` (those this numpy or DeepSpeed lacks are left out)."""
    out = []
    for name in names:
        module, _, attr = name.rpartition(".")
        try:
            out.append(getattr(import_module(module), attr))
        except (ImportError, AttributeError):
            continue
    return out


def deepspeed_safe_globals() -> list:
    return resolve(ENGINE_GLOBALS)


def load(path: str | Path, map_location: Any = None, allow=ENGINE_GLOBALS, mmap: bool = False) -> Any:
    """``torch.load`` weights only, with ``allow`` (import paths) as the only classes besides torch's own.

    Raises CheckpointError (one line) for a missing, damaged or refused file; nothing in it runs."""
    import pickle

    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals(resolve(allow)):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: the checkpoint is partial") from None
    except pickle.UnpicklingError as exc:
        refused = _refused_global(str(exc))
        if refused is None:
            raise CheckpointError(f"{path} cannot be loaded (UnpicklingError): the file is damaged or not a "
                                  f"bigops/DeepSpeed checkpoint file") from None
        raise CheckpointError(f"{path} was refused: it pickles {refused}, which a checkpoint file never holds "
                              f"(a crafted or foreign file?); nothing in it was run") from None
    except Exception as exc:  # truncated, corrupt or foreign: one line, never a traceback
        raise CheckpointError(f"{path} cannot be loaded ({type(exc).__name__}): the file is damaged or not a "
                              f"bigops/DeepSpeed checkpoint file") from None


def _refused_global(message: str) -> str | None:
    """The global torch's weights-only unpickler names in its error (e.g. ``posix.system``)."""
    import re
    match = re.search(r"(?:GLOBAL|global) ([\w.]+)", message)
    return match.group(1)[:120] if match else None


def load_rng_state(path: str | Path) -> dict:
    """A rank's ``rng_state_rank*.pt`` (torch, Python and NumPy generator states), weights only."""
    state = load(path, allow=NUMPY_RNG_GLOBALS)
    if not isinstance(state, dict) or "torch" not in state:
        raise CheckpointError(f"{path} is not an RNG state file of ours")
    return state


class _Delegate:
    """Everything but ``load`` goes to DeepSpeed's own checkpoint engine."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = f"SafeLoad({getattr(inner, 'name', type(inner).__name__)})"

    def create(self, info):
        return self.inner.create(info)

    def save(self, state_dict, path: str):
        return self.inner.save(state_dict, path)

    def makedirs(self, path, exist_ok=False):
        return self.inner.makedirs(path, exist_ok=exist_ok)

    def commit(self, info):
        return self.inner.commit(info)

    def is_data_parallel_writer(self, dp_rank):
        return self.inner.is_data_parallel_writer(dp_rank)

    def is_decoupled(self):
        return self.inner.is_decoupled()

    def set_commit_info(self, info):
        return self.inner.set_commit_info(info)

    def get_commit_info(self):
        return self.inner.get_commit_info()

    def cleanup(self):
        return self.inner.cleanup()

    def preserves_storage_sharing(self):
        return self.inner.preserves_storage_sharing()

    def load(self, path: str, map_location=None):
        return load(path, map_location=map_location)

    def __getattr__(self, name):  # anything DeepSpeed adds later
        return getattr(self.__dict__["inner"], name)


_ENGINE_CLASS: list = []


def safe_checkpoint_engine(inner):
    """A DeepSpeed CheckpointEngine (a subclass, for DeepSpeed's type checks) that loads weights only and
    hands everything else to ``inner`` (DeepSpeed's own)."""
    if not _ENGINE_CLASS:
        from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointEngine
        _ENGINE_CLASS.append(type("SafeCheckpointEngine", (_Delegate, CheckpointEngine), {"__module__": __name__}))
    return _ENGINE_CLASS[0](inner)


def install(engine) -> None:
    """Make DeepSpeed's engine load every checkpoint file through :func:`load` (idempotent)."""
    if not isinstance(engine.checkpoint_engine, _Delegate):
        engine.checkpoint_engine = safe_checkpoint_engine(engine.checkpoint_engine)


def preflight(directory: Path) -> None:
    """Before any rank unpickles a checkpoint: refuse it if one of its ``.pt`` files names a global outside
    the allow-list (read from the pickle's opcodes, nothing executed), so every rank gets the same one-line
    error instead of the first rank to load it failing alone. The loads of the top-level files stay
    weights-only regardless (our checkpoint engine).

    A universal checkpoint's ``zero/`` tree is read by DeepSpeed itself with ``torch.load(weights_only=False)``
    (its universal loading bypasses the checkpoint engine): there this scan is the only guard, so a file it
    cannot read (not torch's zip format, damaged) is refused too, not left to that unpickler."""
    import torch

    root = Path(directory)
    for path in sorted(root.rglob("*.pt")):
        allowed = set(NUMPY_RNG_GLOBALS if path.name.startswith("rng_state_rank") else ENGINE_GLOBALS)
        unguarded = path.parent != root  # zero/<param>/fp32.pt, zero/optimizer_state.pt: DeepSpeed's own load
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # not a zip checkpoint (legacy format) or damaged
            if unguarded:
                raise CheckpointError(f"{path} was refused: it is not a readable torch zip file, and DeepSpeed's "
                                      f"universal loading would unpickle it unchecked; nothing was loaded") from None
            continue  # the weights-only load decides
        refused = sorted(set(names) - allowed)
        if refused:
            raise CheckpointError(f"{path} was refused: it pickles {', '.join(refused)[:200]}, which a checkpoint "
                                  f"file never holds (a crafted or foreign file?); nothing was loaded")