"""ImageNet initialisation from a local file; nothing is ever downloaded.

Two file formats are accepted because both circulate for the paper's backbones:

- torchvision's ``resnet50`` state_dict (``conv1.weight``, ..., ``fc.weight``);
- the IBN-a release format: the same names (with ``layer1.0.bn1.IN.weight`` etc.), either plain
  or wrapped as ``{"state_dict": ...}`` with a ``module.`` prefix left by DataParallel.

``fc.*`` (the ImageNet classifier) is dropped. Files are read with ``weights_only=True``, so a file
that holds arbitrary pickled objects is refused instead of executed.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

_SHOWN = 10
"""How many missing / unexpected names an error message lists."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors in ``path`` with wrappers and ``module.`` prefixes removed and ``fc.*`` dropped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet weights file not found: {path} (weights are never downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(
            f"{path} is not a loadable tensor checkpoint (read with weights_only=True): {err}"
        ) from err
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a state_dict (name -> tensor)")
    tensors = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: entry {name!r} is a {type(value).__name__}, expected a tensor")
        name = name.removeprefix("module.")
        if not name.startswith("fc."):
            tensors[name] = value
    return tensors


def load_imagenet_weights(backbone: nn.Module, path: str | Path) -> None:
    """Copy the weights in ``path`` into ``backbone``; names and shapes must match exactly.

    The only tolerated gap is BatchNorm's ``num_batches_tracked`` counter, which files saved
    before PyTorch 0.4 (such as the original IBN-a release) do not have.
    """
    tensors = read_state_dict(path)
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in tensors and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the backbone ({type(backbone).__name__}): "
            f"{len(missing)} missing keys {missing[:_SHOWN]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:_SHOWN]}"
        )
    wrong_shape = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in tensors.items()
        if v.shape != expected[k].shape
    ]
    if wrong_shape:
        raise ValueError(f"{path}: {len(wrong_shape)} tensors have the wrong shape: {wrong_shape[:_SHOWN]}")
    backbone.load_state_dict(tensors, strict=False)
