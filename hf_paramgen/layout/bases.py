"""Shared orthonormal bases and tensor digests: what the delta codecs (`scale.delta_codec`, `adapters.lora_codec`)
fit and check."""

from __future__ import annotations

import hashlib

import torch


def top_left_singular(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """The top-`rank` left singular vectors of `matrix` (rows x cols), (rows, rank); fewer columns are padded with
    orthonormal complements so the basis always has `rank` columns (at most `rows`)."""
    rank = min(rank, matrix.shape[0])
    U, _, _ = torch.linalg.svd(matrix.double(), full_matrices=False)
    U = U[:, :rank]
    if U.shape[1] < rank:
        extra = torch.linalg.qr(torch.cat([U, torch.randn(matrix.shape[0], rank, dtype=U.dtype,
                                                           generator=torch.Generator().manual_seed(0))], 1))[0]
        U = extra[:, :rank]
    return U.float().contiguous()


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names and float32 bytes: names the exact reference a delta is taken from."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_codec_folder(folder, config: dict, tensors: dict[str, torch.Tensor], config_name: str,
                      weights_name: str) -> None:
    """Write a codec's `config_name` (JSON) and `weights_name` (safetensors) into `folder` atomically, as one folder
    (other files already there, such as a tokenizer, are kept)."""
    import json
    import shutil
    from pathlib import Path

    from safetensors.torch import save_file

    from ..utils import replace_dir, temporary_sibling

    folder = Path(folder)
    tmp = temporary_sibling(folder)
    try:
        tmp.mkdir(parents=True)
        if folder.is_dir():
            for f in folder.iterdir():
                if f.name not in (config_name, weights_name):
                    (shutil.copytree if f.is_dir() else shutil.copy2)(f, tmp / f.name)
        save_file(tensors, str(tmp / weights_name))
        (tmp / config_name).write_text(json.dumps(config, indent=1))
        replace_dir(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_codec_folder(folder, config_name: str, weights_name: str, error: type[Exception],
                      what: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """`(config, tensors)` of a codec folder; `error` (naming `what` the folder should be) when a file is missing,
    corrupt or truncated."""
    import json
    from pathlib import Path

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in (config_name, weights_name):
        if not (folder / name).is_file():
            raise error(f"{folder} is not a {what} folder: no {name} (expected {config_name} and {weights_name}, "
                        "written by its save_pretrained).")
    try:
        return json.loads((folder / config_name).read_text()), load_file(str(folder / weights_name))
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError) as err:
        raise error(f"{what} files in {folder} are corrupt or truncated ({type(err).__name__}: {err}); re-fit or "
                    "re-download it.") from err
