"""Prior training: dataset rows from a corpus (train split only), a few training steps, generator folder."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import ModelCard, ModelCardData

from hf_paramgen.conditioning import HashingTextEncoder, InstructionEncoders, SampleEncoder
from hf_paramgen.data.corpus import build_corpus
from hf_paramgen.data.encoding import param_tokenizer_fingerprint
from hf_paramgen.generation.generator import ParamGenerator
from hf_paramgen.layout.param_layout import ParamLayout
from hf_paramgen.models.configuration_param_tokenizer import ParamTokenizerConfig
from hf_paramgen.models.modeling_param_tokenizer import ParamTokenizer
from hf_paramgen.research.architectures import build_model
from hf_paramgen.research.generate import generate_for_task
from hf_paramgen.research.samples import ZooSamples
from hf_paramgen.research.tasks import Task
from hf_paramgen.training.loop import TrainingConfig
from hf_paramgen.training.prior import (
    build_prior_dataset,
    cli_train_prior,
    load_samples_provider,
    train_prior,
    work_dir,
)

TINY_DECODER = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                "num_attention_heads": 2, "num_key_value_heads": 2}
SPECS = [((3, 1, 4, 0), "train"), ((5, 2, 7, 9), "train"), ((1, 8), "train"), ((6, 0, 2, 4), "validation"),
         ((9, 8, 7, 6), "heldout_task")]


def make_checkpoint(folder, classes, split, seed):
    torch.manual_seed(seed)
    task = Task.make("digits", classes)
    build_model("mlp-64-32", len(classes)).save_pretrained(folder)
    meta = ModelCardData(**task.to_dict(), instruction=task.instruction, num_classes=task.num_classes,
                         architecture="mlp-64-32", seed=seed, split=split)
    ModelCard.from_template(meta, template_str="---\n{{ card_data }}\n---\n# ckpt\n").save(folder / "README.md")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("prior")
    for i, (classes, split) in enumerate(SPECS):
        make_checkpoint(root / f"ckpt{i}", classes, split, i)
    corpus = build_corpus([root / f"ckpt{i}" for i in range(len(SPECS))], root / "corpus", chunk_size=16)
    torch.manual_seed(0)
    tok = ParamTokenizer(ParamTokenizerConfig(chunk_size=16, codebook_size=16, codebook_dim=4, hidden_size=16,
                                              num_layers=1))
    tok.save_pretrained(root / "tok")
    return root, corpus, tok


def test_dataset_rows_hold_codes_structure_and_conditions_of_train_models_only(setup):
    _, corpus, tok = setup
    enc = InstructionEncoders(text=HashingTextEncoder(dim=32))
    ds = build_prior_dataset(corpus, tok, enc, sample_encoders={"digits": SampleEncoder(64, dim=32)},
                             samples=ZooSamples(("digits",)))
    assert ds["model_id"] == ["ckpt0", "ckpt1", "ckpt2"] and set(ds["split"]) == {"train"}
    row = ds.with_format("torch")[0]
    weights = corpus["models"][0]
    layout = ParamLayout.from_json(weights["layout"])
    n = sum(-(-s.numel // 16) for s in layout.specs)
    assert row["codes"].shape == (n,) and int(row["codes"].max()) < 16
    assert row["code_structure"].shape == (n, 10)
    assert row["condition_types"].tolist() == [0, 1, 2, 3, 4, 5]  # text, architecture, 4 class prototypes
    assert ds.with_format("torch")[2]["condition_types"].tolist() == [0, 1, 2, 3]  # a 2-class task
    assert row["condition_embeds"].shape == (6, 32)


def test_train_prior_trains_and_saves_a_loadable_generator(setup):
    root, corpus, _ = setup
    out = root / "gen"
    tc = TrainingConfig(output_dir=str(work_dir(out) / "training"), batch_size=2, max_steps=3, log_every=1,
                        save_every=100, eval_every=1, eval_batches=1)
    overrides = {"transformer": TINY_DECODER, "max_position_embeddings": 96, "max_condition_tokens": 8}
    gen = train_prior(corpus, str(root / "tok"), str(out), overrides, tc, text_encoder="hashing:32",
                      samples=ZooSamples(("digits",)))
    log = [json.loads(line) for line in (work_dir(out) / "training" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r][-1] == 3 and all(r["loss"] > 0 for r in log if "loss" in r)
    assert any("eval_loss" in r for r in log)  # the validation split is monitored
    cache = json.loads((work_dir(out) / "prior_dataset" / "prior_dataset.json").read_text())
    assert cache["param_tokenizer"] == param_tokenizer_fingerprint(ParamTokenizer.from_pretrained(root / "tok"))
    config = json.loads((out / "config.json").read_text())
    assert config["param_tokenizer_subfolder"] == "param_tokenizer" and config["text_encoder"] == "hashing:32"
    assert sorted(config["layouts"]) == ["mlp-64-32:2", "mlp-64-32:4"]
    loaded = ParamGenerator.from_pretrained(out)
    for k, v in gen.prior.state_dict().items():
        assert torch.equal(v, loaded.prior.state_dict()[k])
    task = Task.make("digits", (9, 8, 7, 6))
    result = generate_for_task(loaded, task, "mlp-64-32", num_candidates=2, seed=0)
    assert len(result.scores) == 2 and result.model is not None


def test_cli_train_prior_writes_a_generator_folder(setup):
    root, _, _ = setup
    out = root / "cli_gen"
    rc = cli_train_prior(["--corpus", str(root / "corpus"), "--param_tokenizer", str(root / "tok"), "--output_dir",
                          str(out), "--text_encoder", "hashing:32", "--hidden_size", "32", "--num_layers", "1",
                          "--num_heads", "2", "--context", "96", "--max_steps", "2", "--batch_size", "2",
                          "--warmup_steps", "0", "--sample_datasets", "digits"])
    assert rc == 0 and (out / "param_tokenizer" / "model.safetensors").is_file()
    assert (out / "sample_encoders" / "digits").is_dir()


def test_an_encoded_corpus_gives_its_cached_codes_when_the_param_tokenizer_matches(setup, monkeypatch):
    from hf_paramgen.data.encoding import CODES_COLUMN, encode_corpus, param_tokenizer_fingerprint

    root, corpus, tok = setup
    enc = InstructionEncoders(text=HashingTextEncoder(dim=32))
    fresh = build_prior_dataset(corpus, tok, enc)
    encoded = encode_corpus(corpus, tok, batch_size=7)
    loaded = ParamTokenizer.from_pretrained(root / "tok").eval()
    assert set(encoded["models"][CODES_COLUMN]) == {param_tokenizer_fingerprint(loaded)}
    calls = []
    monkeypatch.setattr(ParamTokenizer, "encode", lambda self, *a, **k: calls.append(1))
    cached = build_prior_dataset(encoded, loaded, enc)  # no encode call: the codes come from the corpus
    assert not calls and cached["codes"] == fresh["codes"] and cached["code_structure"] == fresh["code_structure"]
    monkeypatch.undo()
    torch.manual_seed(1)
    other = ParamTokenizer(ParamTokenizerConfig(chunk_size=16, codebook_size=16, codebook_dim=4, hidden_size=16,
                                                num_layers=1)).eval()
    assert build_prior_dataset(encoded, other, enc)["codes"] == build_prior_dataset(corpus, other, enc)["codes"]


def test_unknown_architectures_and_samples_providers_fail_early_naming_them(setup):
    root, corpus, _ = setup
    out = root / "never"
    with pytest.raises(ValueError, match=r"no models of architectures \['cnn-9'\]; it holds \['mlp-64-32'\]"):
        train_prior(corpus, str(root / "tok"), str(out), architectures=["mlp-64-32", "cnn-9"],
                    text_encoder="hashing:32")
    with pytest.raises(SystemExit):  # argparse: --architectures needs a name
        cli_train_prior(["--corpus", str(root / "corpus"), "--param_tokenizer", str(root / "tok"), "--output_dir",
                         str(out), "--architectures"])
    with pytest.raises(ValueError, match="no models of architectures"):
        cli_train_prior(["--corpus", str(root / "corpus"), "--param_tokenizer", str(root / "tok"), "--output_dir",
                         str(out), "--text_encoder", "hashing:32", "--architectures", "resnet", "--samples", "none"])
    assert not out.exists() and not work_dir(out).exists()
    with pytest.raises(ValueError, match="Cannot import samples provider 'no_such_module:Samples'"):
        load_samples_provider("no_such_module:Samples")
    with pytest.raises(ValueError, match="named 'package.module:Name', got 'ZooSamples'"):
        load_samples_provider("ZooSamples")
    with pytest.raises(ValueError, match="lacks sample_encoders"):
        load_samples_provider("collections:OrderedDict")


def test_cli_train_prior_with_several_codes_per_step(setup):
    """`--codes_per_step 2` on a ParamTokenizer of 2 codes per chunk: grouped batches train, the generator folder
    records it and generates whole networks; a value that does not divide the codes per chunk fails naming both."""
    root, _, _ = setup
    torch.manual_seed(0)
    ParamTokenizer(ParamTokenizerConfig(chunk_size=16, latents_per_chunk=2, codebook_size=16, codebook_dim=4,
                                        hidden_size=16, num_layers=1)).save_pretrained(root / "tok2")
    args = ["--corpus", str(root / "corpus"), "--param_tokenizer", str(root / "tok2"), "--text_encoder", "hashing:32",
            "--hidden_size", "32", "--num_layers", "1", "--num_heads", "2", "--context", "64", "--max_steps", "2",
            "--batch_size", "2", "--warmup_steps", "0", "--sample_datasets", "digits"]
    with pytest.raises(ValueError, match="codes_per_step=3 must divide codes_per_chunk=2"):
        cli_train_prior([*args, "--output_dir", str(root / "never"), "--codes_per_step", "3"])
    out = root / "grouped_gen"
    assert cli_train_prior([*args, "--output_dir", str(out), "--codes_per_step", "2"]) == 0
    assert json.loads((out / "config.json").read_text())["codes_per_step"] == 2
    prior = ParamGenerator.from_pretrained(out).prior
    layout = ParamLayout.from_module(build_model("mlp-64-32", 4))  # 139 chunks: 139 steps, in blocks of < 64
    codes = prior.generate_codes(layout=layout, num_candidates=2, seed=0, do_sample=True)
    assert codes.shape == (2, sum(-(-s.numel // 16) for s in layout.specs), 2) and int(codes.max()) < 16
