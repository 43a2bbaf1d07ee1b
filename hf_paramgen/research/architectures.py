"""The small target networks of the model zoo, saved and loaded the Hub way.

`ZooNet` is an `nn.Module` with huggingface_hub's `PyTorchModelHubMixin`, so a checkpoint is the
folder a Hub repo holds (`config.json` + `model.safetensors` + `README.md`) and
`ZooNet.from_pretrained("org/repo" or folder)` loads it. `config.json` holds exactly the init
keyword arguments, so the declared architecture of any checkpoint can be rebuilt without weights.

Initial weights (`initial_model`): "default" is `torch.manual_seed(init_seed); build_model(...)` (PyTorch's own
init); "nested" (`nested_init_`) makes every tensor a slice of one master tensor per layer role, so a narrow network
starts as a sub-network of a wider or deeper one (one generator for many architectures).
"""

from __future__ import annotations

import contextlib
import math
import sys
import zlib

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
    # MNIST read through average pooling (MLP: pool 4 -> 7x7 = 49 inputs; CNN: pool 2 -> 14x14), several widths and
    # depths: what the "generalise" preset trains one generator on (and the widths/depths it holds out)
    **{f"mlp-p4-{'-'.join(map(str, h))}": {"kind": "mlp", "input_shape": [1, 28, 28], "hidden_sizes": list(h),
                                            "pool": 4}
       for h in ((16,), (24,), (32,), (48,), (16, 16), (16, 16, 16))},
    **{f"cnn-p2-{'-'.join(map(str, h))}": {"kind": "cnn", "input_shape": [1, 28, 28], "hidden_sizes": list(h),
                                            "pool": 2}
       for h in ((8,), (4, 8), (6, 12), (12, 24), (4, 8, 16))},
}
# which dataset an architecture reads (input shape decides it)
ARCHITECTURE_DATASET: dict[str, str] = {
    name: ("mnist" if math.prod(kw["input_shape"]) == 784 else "digits") for name, kw in ARCHITECTURES.items()
}


class ZooNet(nn.Module, PyTorchModelHubMixin, library_name="hf_paramgen", tags=["hf_paramgen", "model-zoo"]):
    """An MLP (`kind="mlp"`) or a small CNN (`kind="cnn"`: stride-2 3x3 convs), both with optional average pooling.

    Args:
        kind: "mlp" or "cnn".
        input_shape: shape of one input without the batch dimension ([784] or [1, 28, 28]).
        hidden_sizes: hidden widths (MLP) or conv channels (CNN).
        num_classes: number of output units, one per class in the task's stated order.
        pool: average-pooling factor applied to the image first (an MLP then flattens the pooled image:
            `input_shape=[1, 28, 28], pool=4` reads 7x7 = 49 inputs); an MLP with `pool > 1` needs a
            (channels, height, width) `input_shape`.
    """

    def __init__(self, kind: str, input_shape: list[int], hidden_sizes: list[int], num_classes: int, pool: int = 1):
        super().__init__()
        if kind not in ("mlp", "cnn"):
            raise ValueError(f"kind must be 'mlp' or 'cnn', got {kind!r}.")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        self.input_shape = list(input_shape)
        layers: list[nn.Module] = []
        if pool < 1:
            raise ValueError(f"pool must be >= 1, got {pool}.")
        if kind == "mlp":
            width = math.prod(input_shape)
            if pool > 1:
                if len(input_shape) != 3:
                    raise ValueError(f"An MLP with pool={pool} needs input_shape [channels, height, width], got "
                                     f"{list(input_shape)}.")
                layers.append(nn.AvgPool2d(pool))
                width = input_shape[0] * (input_shape[1] // pool) * (input_shape[2] // pool)
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

    @classmethod
    def _from_pretrained(cls, *args, **kwargs):
        """`PyTorchModelHubMixin._from_pretrained` with its "Loading weights from local directory" print sent to
        stderr: stdout carries results only."""
        with contextlib.redirect_stdout(sys.stderr):
            return super()._from_pretrained(*args, **kwargs)


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


# ------------------------------------------------------------------------------------------ initialisation
INIT_STYLES = ("default", "nested")
NESTED_MAX_WIDTH = 64  # units, channels and inputs of any hidden layer under nested init
NESTED_MAX_CLASSES = 10  # output units of the head
NESTED_MAX_SIDE = 16  # side of the feature map a CNN's head reads


def _uniform(shape: tuple[int, ...], *role) -> torch.Tensor:
    """uniform(-1, 1) of `shape`, drawn from a `torch.Generator` seeded by `zlib.crc32("/".join(role))`."""
    gen = torch.Generator().manual_seed(zlib.crc32("/".join(map(str, role)).encode()))
    return torch.empty(shape).uniform_(-1.0, 1.0, generator=gen)


@torch.no_grad()
def nested_init_(model: ZooNet, init_seed: int) -> ZooNet:
    """Set every parameter of `model` in place to a slice of a master tensor shared by all architectures.

    Role ("hidden", l, module type) is the l-th Linear/Conv2d counted from the input, "head" the last Linear. A
    hidden layer's weight is `master[:out, :in] / sqrt(fan_in)` with master uniform(-1, 1) of shape
    (NESTED_MAX_WIDTH, NESTED_MAX_WIDTH, *kernel), its bias `bias_master[:out] / sqrt(fan_in)` (PyTorch's default
    bound); both masters come from one `torch.Generator` seeded by `zlib.crc32("<init_seed>/hidden/<l>/<type>")`.
    The head's master is (NESTED_MAX_CLASSES, NESTED_MAX_WIDTH) after an MLP; after a CNN (a Linear over the
    flattened (C, s, s) map, channel-major) it is (NESTED_MAX_CLASSES, NESTED_MAX_WIDTH, NESTED_MAX_SIDE,
    NESTED_MAX_SIDE), sliced [:k, :C, :s, :s] and reshaped to (k, C*s*s). So unit i / channel c of a narrow network
    equals unit i / channel c of a wider one up to the 1/sqrt(fan_in) factor, and head row i is the same for any
    number of classes k.

    Args:
        model: a `ZooNet` (Linear/Conv2d layers in `model.net`, the head last).
        init_seed: the shared initialisation's seed (`zoo_plan.SHARED_INIT_SEEDS`).

    Returns:
        `model`.
    """
    layers = [m for m in model.net if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers or not isinstance(layers[-1], nn.Linear) or layers[-1] is not model.net[-1]:
        raise ValueError(f"nested_init_ expects a ZooNet whose last module is the Linear head, got {model.net}.")
    for depth, layer in enumerate(layers[:-1]):
        out, fan = layer.weight.shape[:2]
        if max(out, fan) > NESTED_MAX_WIDTH:
            raise ValueError(f"nested_init_: hidden layer {depth} has weight shape {tuple(layer.weight.shape)}; "
                             f"expected at most {NESTED_MAX_WIDTH} units and inputs (NESTED_MAX_WIDTH).")
        kernel = tuple(layer.weight.shape[2:])
        role = (init_seed, "hidden", depth, type(layer).__name__)
        master = _uniform((NESTED_MAX_WIDTH, NESTED_MAX_WIDTH, *kernel), *role)
        bias = _uniform((NESTED_MAX_WIDTH,), *role, "bias")
        bound = 1.0 / math.sqrt(layer.weight[0].numel())
        layer.weight.copy_(master[:out, :fan] * bound)
        layer.bias.copy_(bias[:out] * bound)
    head = layers[-1]
    k = head.out_features
    features = model.net[:-2](torch.zeros(1, *model.input_shape))  # what the Flatten before the head receives
    if isinstance(model.net[-2], nn.Flatten) and features.ndim == 4:  # (1, C, s, s): a CNN's map
        shape = tuple(features.shape[1:])
        kind, limits = "map", (NESTED_MAX_CLASSES, NESTED_MAX_WIDTH, NESTED_MAX_SIDE, NESTED_MAX_SIDE)
    else:
        shape, kind, limits = (head.in_features,), "vector", (NESTED_MAX_CLASSES, NESTED_MAX_WIDTH)
    if any(n > m for n, m in zip((k, *shape), limits, strict=True)):
        raise ValueError(f"nested_init_: the head reads {shape} features into {k} classes; expected at most "
                         f"{limits[1:]} features and {NESTED_MAX_CLASSES} classes.")
    master = _uniform(limits, init_seed, "head", kind)
    bias = _uniform((NESTED_MAX_CLASSES,), init_seed, "head", kind, "bias")
    bound = 1.0 / math.sqrt(head.in_features)
    head.weight.copy_(master[(slice(0, k), *(slice(0, n) for n in shape))].reshape(k, -1) * bound)
    head.bias.copy_(bias[:k] * bound)
    return model


def initial_model(architecture: str, num_classes: int, init_seed: int, init_style: str = "default") -> ZooNet:
    """The untrained network a zoo job starts from.

    Args:
        architecture: a name of `ARCHITECTURES`.
        num_classes: output units.
        init_seed: the initialisation's seed.
        init_style: "default" (`torch.manual_seed(init_seed); build_model(...)`, PyTorch's init) or "nested"
            (the same, then `nested_init_(model, init_seed)`).
    """
    if init_style not in INIT_STYLES:
        raise ValueError(f"init_style must be one of {INIT_STYLES}, got {init_style!r}.")
    torch.manual_seed(init_seed)
    model = build_model(architecture, num_classes)
    return nested_init_(model, init_seed) if init_style == "nested" else model
