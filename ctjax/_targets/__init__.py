from .base import AbstractTarget as AbstractTarget
from .empirical import Empirical as Empirical
from .gaussian import Gaussian as Gaussian
from .mixture import GaussianMixture as GaussianMixture
