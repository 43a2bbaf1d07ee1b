"""`ParamConditioner`: the instruction encoders of a diffusion generator as one diffusers component.

It holds the sample encoders (`SampleEncoder`: few labelled samples -> class prototypes in class order) as buffers
and names the text encoder (a Hub id, a folder or `hashing:<dim>`), exactly what a `ParamGenerator` keeps beside
its prior, so both families get the same condition vectors for the same instruction. Saved and loaded as a
`ModelMixin` (`conditioner/config.json` + weights) inside the pipeline folder.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from ..conditioning.samples import SampleEncoder

SAMPLE_ENCODER_FIELDS = ("num_features", "dim", "method", "normalize")


def sample_encoder_spec(encoder: SampleEncoder) -> dict:
    """The constructor arguments that rebuild `encoder`'s shape (its buffers come from the saved weights)."""
    return {name: getattr(encoder, name) for name in SAMPLE_ENCODER_FIELDS}


class ParamConditioner(ModelMixin, ConfigMixin):
    """Text encoder name + sample encoders (name -> spec) + the condition limits the denoiser was built for.

    Args:
        text_encoder: Hub id, folder or `hashing:<dim>` of the text encoder (built lazily by the generator).
        condition_dim: width of every condition vector.
        max_condition_tokens: most condition tokens an instruction may have (text, architecture, one per class).
        sample_encoders: name -> `{"num_features", "dim", "method", "normalize"}`.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, text_encoder: str = "hashing:384", condition_dim: int = 384, max_condition_tokens: int = 34,
                 sample_encoders: dict[str, dict] | None = None):
        super().__init__()
        encoders = {}
        for name, spec in (sample_encoders or {}).items():
            unknown = sorted(set(spec) - set(SAMPLE_ENCODER_FIELDS))
            if unknown:
                raise ValueError(f"sample encoder {name!r}: unknown fields {unknown}; expected "
                                 f"{SAMPLE_ENCODER_FIELDS}.")
            encoders[name] = SampleEncoder(**spec)
        self.encoders = nn.ModuleDict(encoders)  # not `sample_encoders`: that name is the config field
        # a conditioner without sample encoders still has a weight file to save and load
        self.register_buffer("format_version", torch.ones(1))

    @classmethod
    def from_encoders(cls, text_encoder: str, condition_dim: int, max_condition_tokens: int,
                      sample_encoders: dict[str, SampleEncoder]) -> ParamConditioner:
        """A conditioner holding copies of `sample_encoders` (their fitted buffers included)."""
        conditioner = cls(text_encoder, condition_dim, max_condition_tokens,
                          {name: sample_encoder_spec(enc) for name, enc in sample_encoders.items()})
        for name, enc in sample_encoders.items():
            conditioner.encoders[name].load_state_dict(enc.state_dict())
        return conditioner

    def forward(self, *args, **kwargs):  # a container: the generator calls its sample encoders
        raise TypeError("ParamConditioner is a container of encoders; call DiffusionParamGenerator.encode instead.")
