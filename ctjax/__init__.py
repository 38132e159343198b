"""ctjax: consistency training for diffusion models in pure JAX, with the exact probability flow
as ground truth."""

import importlib.metadata

from . import metrics as metrics, presets as presets, theory as theory, training as training
from ._consistency import (
    AbstractConsistencyModel as AbstractConsistencyModel,
    AbstractScalings as AbstractScalings,
    ConsistencyFunction as ConsistencyFunction,
    EDMScalings as EDMScalings,
    ExactConsistencyFunction as ExactConsistencyFunction,
    StagedConsistencyModel as StagedConsistencyModel,
    TrigFlowScalings as TrigFlowScalings,
)
from ._flow import (
    denoiser as denoiser,
    flow_map as flow_map,
    gaussian_flow_map as gaussian_flow_map,
    score as score,
    velocity as velocity,
)
from ._flow_maps import (
    AbstractFlowMap as AbstractFlowMap,
    ConsistencySlice as ConsistencySlice,
    ExactFlowMap as ExactFlowMap,
    FlowMap as FlowMap,
)
from ._losses import (
    AbstractDistance as AbstractDistance,
    AbstractWeighting as AbstractWeighting,
    InverseDeltaWeighting as InverseDeltaWeighting,
    L2 as L2,
    PseudoHuber as PseudoHuber,
    SquaredL2 as SquaredL2,
    UniformWeighting as UniformWeighting,
)
from ._nets import (
    AbstractEmbedding as AbstractEmbedding,
    AbstractNetwork as AbstractNetwork,
    ConvNet as ConvNet,
    FourierEmbedding as FourierEmbedding,
    LinearNet as LinearNet,
    MLP as MLP,
    SinusoidalEmbedding as SinusoidalEmbedding,
)
from ._nets.two_time import AbstractTwoTimeNetwork as AbstractTwoTimeNetwork, TwoTimeMLP as TwoTimeMLP
from ._sampling import sample as sample
from ._schedules import (
    AbstractSchedule as AbstractSchedule,
    DiscreteVP as DiscreteVP,
    karras_noise_levels as karras_noise_levels,
    LinearInterpolant as LinearInterpolant,
    TrigFlow as TrigFlow,
    VarianceExploding as VarianceExploding,
    VariancePreserving as VariancePreserving,
)
from ._split import holdout_split as holdout_split
from ._targets import (
    AbstractTarget as AbstractTarget,
    Empirical as Empirical,
    Gaussian as Gaussian,
    GaussianMixture as GaussianMixture,
)


try:
    __version__ = importlib.metadata.version("ctjax")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+local"
