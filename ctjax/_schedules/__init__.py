from .base import AbstractSchedule as AbstractSchedule, karras_noise_levels as karras_noise_levels
from .discrete_vp import DiscreteVP as DiscreteVP
from .linear import LinearInterpolant as LinearInterpolant
from .trigflow import TrigFlow as TrigFlow
from .variance_exploding import VarianceExploding as VarianceExploding
from .variance_preserving import VariancePreserving as VariancePreserving
