import numpy as np
import pytest
import torch
from datasets import Dataset
from torch import nn

from hf_paramgen import ParamLayout
from hf_paramgen.conditioning import (
    ConditionEncoder,
    HashingTextEncoder,
    Instruction,
    InstructionEncoders,
    SampleEncoder,
    TextEncoder,
    add_condition_columns,
    encode_instruction,
)
from hf_paramgen.research.samples import sample_encoder_for_dataset

torch.set_num_threads(1)


def few_shot(num_classes: int = 3, per_class: int = 5, features: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes), per_class)
    X = rng.normal(size=(len(y), features)) + 3 * y[:, None]  # classes differ in their mean
    return X.astype(np.float32), y


def test_hashing_text_encoder_is_deterministic_normalised_and_validates():
    enc = HashingTextEncoder(dim=16)
    out = enc(["classify digits 0 to 4", "classify digits 5 to 9"])
    assert out.shape == (2, 1, 16) and isinstance(enc, ConditionEncoder)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 1))
    torch.testing.assert_close(enc("classify digits 0 to 4"), out[:1], rtol=0, atol=0)
    assert not torch.equal(out[0], out[1])
    with pytest.raises(ValueError, match="Text 0 is empty"):
        enc("  ")
    with pytest.raises(ValueError, match="Text has 4 words, more than max_words=3"):
        HashingTextEncoder(dim=16, max_words=3)("a b c d")


def test_sample_encoder_gives_one_prototype_per_class_in_class_order():
    enc = SampleEncoder(num_features=64, dim=32)
    X, y = few_shot()
    protos = enc(X, y)
    assert protos.shape == (1, 3, 32) and isinstance(enc, ConditionEncoder)
    torch.testing.assert_close(protos.norm(dim=-1), torch.ones(1, 3))
    perm = np.array([2, 0, 1])  # relabel class c as perm[c]: prototype rows move with the labels
    torch.testing.assert_close(enc(X, perm[y])[0, perm], protos[0])
    order = np.random.default_rng(0).permutation(len(y))  # sample order does not matter
    torch.testing.assert_close(enc(X[order], y[order]), protos)
    assert enc(X, y, num_classes=3).shape == (1, 3, 32)


def test_sample_encoder_errors_name_expected_and_received():
    enc = SampleEncoder(num_features=64, dim=32)
    X, y = few_shot()
    with pytest.raises(ValueError, match="expects 64 features per sample, got 784"):
        enc(np.zeros((4, 784)), np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"Labels must lie in 0..1 \(class order = output order\), got \[2\]"):
        enc(X, y, num_classes=2)
    with pytest.raises(ValueError, match=r"Classes \[1\] have no samples"):
        enc(X[y != 1], y[y != 1])
    with pytest.raises(ValueError, match=r"Labels must lie in 0..2.*got \[-1\]"):
        enc(X, np.where(y == 0, -1, y), num_classes=3)
    with pytest.raises(ValueError, match="Got 15 samples but 3 labels"):
        enc(X, y[:3])
    with pytest.raises(RuntimeError, match="must be fit"):
        SampleEncoder(num_features=64, dim=32, method="pca")(X, y)


def test_sample_encoder_pca_for_digits_saves_and_loads_exactly(tmp_path):
    enc = sample_encoder_for_dataset("digits", dim=96)  # 64 features: columns past rank 64 are zero
    assert enc.projection.shape == (64, 96) and bool((enc.projection[:, 64:] == 0).all())
    from sklearn.datasets import load_digits

    digits = load_digits()
    X, y = digits.data[:200] / 16.0, digits.target[:200]
    protos = enc(X, y)
    assert protos.shape == (1, 10, 96)
    enc.save_pretrained(tmp_path)
    loaded = SampleEncoder.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(X, y), protos, rtol=0, atol=0)


def test_encode_instruction_fixed_order_and_types():
    text = HashingTextEncoder(dim=32)
    samples = SampleEncoder(num_features=64, dim=32)
    layout = ParamLayout.from_module(nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3)))
    X, y = few_shot()
    enc = encode_instruction(Instruction("digits 0-2", (X, y), layout), InstructionEncoders(text=text, samples=samples))
    assert enc.condition_embeds.shape == (1, 5, 32)
    assert enc.condition_types.tolist() == [[0, 1, 2, 3, 4]]
    torch.testing.assert_close(enc.condition_embeds[0, 0], text("digits 0-2")[0, 0])
    torch.testing.assert_close(enc.condition_embeds[0, 1], text(layout.describe())[0, 0])
    torch.testing.assert_close(enc.condition_embeds[0, 2:], samples(X, y)[0])
    only_samples = encode_instruction(Instruction(samples=(X, y)), InstructionEncoders(samples=samples))
    assert only_samples.condition_types.tolist() == [[2, 3, 4]]
    assert set(enc.as_model_kwargs()) == {"condition_embeds", "condition_types"}


def test_encode_instruction_errors():
    text = HashingTextEncoder(dim=32)
    X, y = few_shot()
    with pytest.raises(ValueError, match="instruction is empty"):
        encode_instruction(Instruction(), InstructionEncoders(text=text))
    with pytest.raises(ValueError, match="Text 0 is empty"):
        encode_instruction(Instruction(task_text=""), InstructionEncoders(text=text))
    with pytest.raises(ValueError, match="5 condition tokens, more than max_condition_tokens=4"):
        encode_instruction(Instruction("t", (X, y), "arch"),
                           InstructionEncoders(text=text, samples=SampleEncoder(64, dim=32)), max_condition_tokens=4)
    with pytest.raises(ValueError, match=r"disagree on the condition width: got \[16, 32\]"):
        encode_instruction(Instruction("t", (X, y)), InstructionEncoders(text=text, samples=SampleEncoder(64, dim=16)))
    with pytest.raises(ValueError, match="has samples but no sample encoder"):
        encode_instruction(Instruction("t", (X, y)), InstructionEncoders(text=text))


def test_add_condition_columns_caches_vectors_in_a_dataset():
    X, y = few_shot(num_classes=2)
    ds = Dataset.from_dict({
        "task_text": ["task a", "task b"],
        "architecture": ["mlp-64-8", "mlp-64-16"],
        "samples_X": [X.tolist(), X.tolist()],
        "samples_y": [y.tolist(), y[::-1].tolist()],
    })
    encoders = InstructionEncoders(text=HashingTextEncoder(dim=32), samples=SampleEncoder(64, dim=32))
    out = add_condition_columns(ds, encoders, samples_columns=("samples_X", "samples_y")).with_format("torch")[:]
    assert out["condition_embeds"].shape == (2, 4, 32) and out["condition_types"].tolist() == [[0, 1, 2, 3]] * 2
    for i, labels in enumerate([y, y[::-1].copy()]):
        direct = encode_instruction(Instruction(f"task {'ab'[i]}", (X, labels), ds[i]["architecture"]), encoders)
        torch.testing.assert_close(out["condition_embeds"][i], direct.condition_embeds[0])


def test_text_encoder_minilm_offline_mean_pooled():
    enc = TextEncoder("all-MiniLM-L6-v2")
    out = enc(["an MLP for MNIST digits", "a classifier of handwritten digits", "the weather is sunny today"])
    assert out.shape == (3, 1, 384) and enc.dim == 384 and enc.pooling == "mean"
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3, 1))
    sims = (out[:, 0] @ out[:, 0].T)
    assert sims[0, 1] > sims[0, 2] + 0.1  # related instructions lie closer
    torch.testing.assert_close(enc("an MLP for MNIST digits"), out[:1], rtol=0, atol=1e-6)
    with pytest.raises(ValueError,
                       match=r"tokens, more than all-MiniLM-L6-v2's limit 256; shorten it or pass truncation=True"):
        enc("digits " * 400)
    assert TextEncoder("all-MiniLM-L6-v2", truncation=True)("digits " * 400).shape == (1, 1, 384)


def test_sample_encoder_applies_a_frozen_feature_extractor(tmp_path):
    torch.manual_seed(0)
    extractor = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # e.g. images (n, 1, 8, 8) -> 10 features
    enc = SampleEncoder(num_features=10, dim=8, feature_extractor=extractor)
    X, y = few_shot()
    images = X.reshape(-1, 1, 8, 8)
    protos = enc(images, y)
    assert protos.shape == (1, 3, 8) and not any(p.requires_grad for p in extractor.parameters())
    assert "feature_extractor" not in "".join(enc.state_dict())
    enc.save_pretrained(tmp_path)
    loaded = SampleEncoder.from_pretrained(tmp_path, feature_extractor=extractor)
    torch.testing.assert_close(loaded(images, y), protos, rtol=0, atol=0)
    with pytest.raises(ValueError, match="expects 10 features per sample, got 64"):
        SampleEncoder.from_pretrained(tmp_path)(images, y)


def test_text_sample_encoder_is_the_identity_on_text_vectors(tmp_path):
    enc = SampleEncoder.for_texts(6)
    X = torch.randn(6, 6)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    expected = torch.nn.functional.normalize(torch.stack([X[0:2].mean(0), X[2:4].mean(0), X[4:6].mean(0)]), dim=-1)
    assert torch.allclose(enc(X, y)[0], expected, atol=1e-6)
    enc.save_pretrained(tmp_path / "text")
    assert torch.equal(SampleEncoder.from_pretrained(tmp_path / "text")(X, y), enc(X, y))
    with pytest.raises(ValueError, match="needs num_features == dim, got 5 and 6"):
        SampleEncoder(num_features=5, dim=6, method="identity")
    with pytest.raises(ValueError, match="expected 'mnist', 'digits' or 'text'"):
        sample_encoder_for_dataset("imagenet")
