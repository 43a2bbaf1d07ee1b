import json

import pytest
import torch
from torch import nn

from hf_paramgen import LayoutError, ParamLayout


def _conv_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _tiny_bert():
    from transformers import BertConfig

    return BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)


@pytest.mark.parametrize("build", ["mlp", "conv", "bert"])
def test_flatten_unflatten_roundtrip_is_exact(build):
    torch.manual_seed(0)
    if build == "mlp":
        model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 2))
    elif build == "conv":
        model = _conv_net()
    else:
        from transformers import AutoModel

        model = AutoModel.from_config(_tiny_bert())
    layout = ParamLayout.from_module(model, include_buffers=True)
    sd = model.state_dict()
    weights = layout.flatten(sd)
    assert weights.shape == (layout.num_params,)
    back = layout.unflatten(weights)
    for name in layout.names:
        torch.testing.assert_close(back[name], sd[name], rtol=0, atol=0)
    assert ParamLayout.from_json(layout.to_json()) == layout


def test_kinds_come_from_modules_and_buffers_are_optional():
    model = _conv_net()
    without = ParamLayout.from_module(model)
    with_buffers = ParamLayout.from_module(model, include_buffers=True)
    assert without["0.weight"].kind == "conv.weight"
    assert without["1.weight"].kind == "norm.weight"
    assert without["4.bias"].kind == "linear.bias"
    assert "1.running_mean" not in without.names
    assert with_buffers["1.running_mean"].kind == "buffer"
    assert "1.num_batches_tracked" not in with_buffers.names  # integer buffer


def test_layout_from_transformers_config_matches_real_model():
    from transformers import AutoModel

    config = _tiny_bert()
    from_config = ParamLayout.from_config(config)
    real = ParamLayout.from_module(AutoModel.from_config(config))
    assert from_config.specs == real.specs
    assert "embedding.weight" in {s.kind for s in from_config.specs}
    assert "params:" in from_config.describe()


def test_flatten_errors_name_the_tensor():
    model = nn.Sequential(nn.Linear(3, 2))
    layout = ParamLayout.from_module(model)
    sd = model.state_dict()
    with pytest.raises(LayoutError, match="missing tensors"):
        layout.flatten({"0.weight": sd["0.weight"]})
    with pytest.raises(LayoutError, match=r"'0.weight' has shape \(3, 2\), expected \(2, 3\)"):
        layout.flatten({"0.weight": sd["0.weight"].T, "0.bias": sd["0.bias"]})
    bad = dict(sd, **{"0.bias": torch.tensor([1.0, float("nan")])})
    with pytest.raises(LayoutError, match="'0.bias' holds 1 NaN"):
        layout.flatten(bad, source="ckpt-7")
    with pytest.raises(LayoutError, match="flat vector of 8"):
        layout.unflatten(torch.zeros(7))


def test_layout_json_rejects_tampered_offsets():
    layout = ParamLayout.from_module(nn.Linear(3, 2))
    data = json.loads(layout.to_json())
    data["specs"][1]["offset"] = 5
    with pytest.raises(LayoutError, match="Offset of 'bias'"):
        ParamLayout.from_dict(data)


def test_output_size_and_head_are_defined_on_the_layout():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    layout = ParamLayout.from_module(net)
    assert layout.output_size == 3 and layout.head_tensors == [2, 3]
    conv = ParamLayout.from_module(_conv_net())  # the norm after the conv is no head; the last Linear is
    assert conv.output_size == 3 and [conv.specs[i].name for i in conv.head_tensors] == ["4.weight", "4.bias"]
    assert ParamLayout.from_module(nn.LayerNorm(5)).output_size is None
    assert ParamLayout.from_module(nn.LayerNorm(5)).head_tensors == []
    named = ParamLayout(layout.specs, {"head": ["0.weight"]})
    assert named.head_tensors == [0] and ParamLayout(layout.specs, {"head": None}).head_tensors == []
