"""The small target networks of the model zoo, saved and loaded the Hub way.

`ZooNet` is an `nn.Module` with huggingface_hub's `PyTorchModelHubMixin`, so a checkpoint is the
folder a Hub repo holds (`config.json` + `model.safetensors` + `README.md`) and
`ZooNet.from_pretrained("org/repo" or folder)` loads it. `config.json` holds exactly the init
keyword arguments, so the declared architecture of any checkpoint can be rebuilt without weights.
"""

from __future__ import annotations

import math

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

# name -> ZooNet keyword arguments except `num_classes` (which the task sets).
ARCHITECTURES: dict[str, dict] = {
    "mlp-784-16": {"kind": "mlp", "input_shape": [784], "hidden_sizes": [16]},
    "mlp-784-32": {"kind": "mlp", "input_shape": [784], "hidden_sizes": [32]},
    "mlp-784-48": {"kind": "mlp", "input_shape": [784], "hidden_sizes": [48]},
    "mlp-784-64": {"kind": "mlp", "input_shape": [784], "hidden_sizes": [64]},
    "mlp-784-32-32": {"kind": "mlp", "input_shape": [784], "hidden_sizes": [32, 32]},
    "cnn-mnist": {"kind": "cnn", "input_shape": [1, 28, 28], "hidden_sizes": [8, 16], "pool": 2},
    "mlp-64-32": {"kind": "mlp", "input_shape": [64], "hidden_sizes": [32]},
    "cnn-digits": {"kind": "cnn", "input_shape": [1, 8, 8], "hidden_sizes": [8, 16], "pool": 1},
}
# which dataset an architecture reads (input shape decides it)
ARCHITECTURE_DATASET: dict[str, str] = {
    name: ("mnist" if math.prod(kw["input_shape"]) == 784 else "digits") for name, kw in ARCHITECTURES.items()
}


class ZooNet(nn.Module, PyTorchModelHubMixin, library_name="hf_paramgen", tags=["hf_paramgen", "model-zoo"]):
    """An MLP (`kind="mlp"`) or a small CNN (`kind="cnn"`: optional average pooling, stride-2 3x3 convs).

    Args:
        kind: "mlp" or "cnn".
        input_shape: shape of one input without the batch dimension ([784] or [1, 28, 28]).
        hidden_sizes: hidden widths (MLP) or conv channels (CNN).
        num_classes: number of output units, one per class in the task's stated order.
        pool: CNN only, average-pooling factor applied to the input first.
    """

    def __init__(self, kind: str, input_shape: list[int], hidden_sizes: list[int], num_classes: int, pool: int = 1):
        super().__init__()
        if kind not in ("mlp", "cnn"):
            raise ValueError(f"kind must be 'mlp' or 'cnn', got {kind!r}.")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        self.input_shape = list(input_shape)
        layers: list[nn.Module] = []
        if kind == "mlp":
            width = math.prod(input_shape)
            layers.append(nn.Flatten())
            for h in hidden_sizes:
                layers += [nn.Linear(width, h), nn.ReLU()]
                width = h
        else:
            channels, side = input_shape[0], input_shape[-1]
            if pool > 1:
                layers.append(nn.AvgPool2d(pool))
                side //= pool
            for i, c in enumerate(hidden_sizes):
                stride = 1 if (i == 0 and side <= 8) else 2
                layers += [nn.Conv2d(channels, c, 3, stride=stride, padding=1), nn.ReLU()]
                channels, side = c, (side + 2 - 3) // stride + 1
            layers.append(nn.Flatten())
            width = channels * side * side
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (b, *input_shape) or (b, prod(input_shape))
        return self.net(x.reshape(x.shape[0], *self.input_shape))


def build_model(architecture: str, num_classes: int) -> ZooNet:
    """A fresh `ZooNet` for a named architecture of `ARCHITECTURES`."""
    if architecture not in ARCHITECTURES:
        raise KeyError(f"Unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}.")
    return ZooNet(num_classes=num_classes, **ARCHITECTURES[architecture])


def model_from_config(config: dict) -> ZooNet:
    """Rebuild the (untrained) network a checkpoint's `config.json` declares."""
    expected = {"kind", "input_shape", "hidden_sizes", "num_classes"}
    missing = expected - set(config)
    if missing:
        raise ValueError(f"config.json is not a ZooNet config: missing keys {sorted(missing)} (got {sorted(config)}).")
    kwargs = {k: config[k] for k in (*expected, "pool") if k in config}
    return ZooNet(**kwargs)
