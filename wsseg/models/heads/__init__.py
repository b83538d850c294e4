"""Decoder pieces of the single-stage segmenter, one idea per file."""

from wsseg.models.heads.aspp import ASPP
from wsseg.models.heads.gci import GlobalCueInjection
from wsseg.models.heads.sg import StochasticGate

__all__ = ["ASPP", "GlobalCueInjection", "StochasticGate"]
