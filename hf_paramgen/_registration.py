"""The package's only import-time side effect: register the models with the Auto classes and the
`parameter-generation` pipeline task (as peft registers its tuners)."""

from __future__ import annotations


def register_all() -> None:
    from .models.modeling_param_prior import register as register_prior
    from .models.modeling_param_tokenizer import register as register_tokenizer

    register_tokenizer()
    register_prior()
    from .generation.pipeline_parameter_generation import register as register_pipeline

    register_pipeline()
