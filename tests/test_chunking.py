import pytest
import torch
from torch import nn

from hf_paramgen import LayoutError, ParamLayout, chunk, chunk_positions, num_chunks, unchunk


@pytest.fixture
def layout_and_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    layout = ParamLayout.from_module(model)
    return layout, layout.flatten(model.state_dict())


@pytest.mark.parametrize("aggregation", ["layer", "architecture"])
@pytest.mark.parametrize("chunk_size", [1, 7, 16, 1000])
def test_chunk_unchunk_roundtrip_is_exact(layout_and_weights, aggregation, chunk_size):
    layout, weights = layout_and_weights
    out = chunk(weights, layout, chunk_size, aggregation)
    n = num_chunks(layout, chunk_size, aggregation)
    assert out.chunks.shape == (n, chunk_size) and out.chunk_mask.shape == (n, chunk_size)
    assert out.chunk_position.shape == (n, 3)
    assert int(out.chunk_mask.sum()) == layout.num_params
    assert (out.chunks[~out.chunk_mask] == 0).all()
    torch.testing.assert_close(unchunk(out.chunks, layout, aggregation), weights, rtol=0, atol=0)


def test_layer_mode_never_straddles_tensors(layout_and_weights):
    layout, weights = layout_and_weights
    out = chunk(weights, layout, 16, "layer")
    # conv.weight 27 -> 2 chunks, conv.bias 3 -> 1, linear.weight 240 -> 15, linear.bias 5 -> 1
    assert out.chunk_position[:, 0].tolist() == [0, 0, 1] + [2] * 15 + [3]
    assert out.chunk_position[:, 1].tolist() == [0, 1, 0] + list(range(15)) + [0]
    assert out.chunk_position[0, 2] == layout.specs[0].kind_id
    position, mask = chunk_positions(layout, 16, "layer")
    assert torch.equal(position, out.chunk_position) and torch.equal(mask, out.chunk_mask)


def test_bad_arguments_are_named(layout_and_weights):
    layout, weights = layout_and_weights
    with pytest.raises(ValueError, match="aggregation must be one of"):
        chunk(weights, layout, 8, "global")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        chunk(weights, layout, 0)
    with pytest.raises(LayoutError, match="layout needs"):
        unchunk(torch.zeros(3, 8), layout)
