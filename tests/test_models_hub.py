"""`push_to_hub` of the two models to the loopback Hub, and `from_pretrained` back by repo id, exact."""

import torch
from test_param_prior import tiny_model
from test_param_tokenizer import tiny_tokenizer
from transformers import AutoModel, AutoModelForCausalLM


def _assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], rtol=0, atol=0)


def test_param_tokenizer_push_to_hub_then_from_pretrained_is_exact(hub_endpoint, hub_repo_id):
    model = tiny_tokenizer()
    model.push_to_hub(hub_repo_id)
    loaded = AutoModel.from_pretrained(hub_repo_id)
    assert type(loaded).__name__ == "ParamTokenizer"
    _assert_same(model, loaded)


def test_prior_push_to_hub_then_from_pretrained_is_exact(hub_endpoint, hub_repo_id):
    model = tiny_model()
    model.push_to_hub(hub_repo_id)
    loaded = AutoModelForCausalLM.from_pretrained(hub_repo_id)
    assert type(loaded).__name__ == "ParamPriorForCausalLM"
    _assert_same(model, loaded)
