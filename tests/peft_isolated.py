"""Load a PEFT adapter folder in a fresh `python -I` process that refuses to import hf_paramgen (what a user of
transformers and peft alone does), and return its logits on some texts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap


def peft_logits_without_hf_paramgen(base_folder, adapter_dir, texts: list[str], cwd, num_labels: int = 4) -> dict:
    """`{"type": PeftModel class name, "logits": [[...]]}` from `PeftModel.from_pretrained(
    AutoModelForSequenceClassification.from_pretrained(base_folder, num_labels), adapter_dir)`; fails on any
    missing/unexpected-keys warning from peft or an hf_paramgen import."""
    code = textwrap.dedent(f"""
        import importlib.abc, json, sys
        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "hf_paramgen":
                    raise ImportError("hf_paramgen must not be imported here")
        sys.meta_path.insert(0, Refuse())
        import torch
        torch.set_num_threads(1)
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        folder = {str(base_folder)!r}
        base = AutoModelForSequenceClassification.from_pretrained(folder, num_labels={num_labels})
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = PeftModel.from_pretrained(base, {str(adapter_dir)!r}).eval()
        keys = [str(w.message) for w in caught if "keys" in str(w.message).lower()]
        assert not keys, keys  # peft warns of missing or unexpected adapter keys
        batch = AutoTokenizer.from_pretrained(folder)({list(texts)!r}, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**batch).logits
        assert "hf_paramgen" not in sys.modules
        print(json.dumps({{"type": type(model).__name__, "logits": logits.tolist()}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_same_logits_without_hf_paramgen(model, base_folder, adapter_dir, texts: list[str], cwd):
    """`model` (an in-process PeftModel) and `adapter_dir` loaded by peft alone in a fresh process give the same logits
    on `texts`, and the fresh process builds a `PeftModelForSequenceClassification`. Returns `(batch, logits)` of
    `model` on the tokenised texts."""
    import torch
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(base_folder)(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.eval()(**batch).logits
    loaded = peft_logits_without_hf_paramgen(base_folder, adapter_dir, texts, cwd)
    assert loaded["type"] == "PeftModelForSequenceClassification"
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, rtol=0, atol=1e-5)
    return batch, expected
