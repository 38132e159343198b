"""Trainers: pure `init`/`step` over an immutable `TrainState`, and `fit` to run them."""

from .base import AbstractTrainer as AbstractTrainer
from .consistency import cd as cd, ConsistencyTrainer as ConsistencyTrainer, ct as ct, ict as ict
from .continuous import (
    AdaptiveWeighting as AdaptiveWeighting,
    ContinuousConsistencyTrainer as ContinuousConsistencyTrainer,
    scd as scd,
    sct as sct,
)
from .curricula import (
    AbstractCurriculum as AbstractCurriculum,
    AbstractGrid as AbstractGrid,
    AbstractIndexSampler as AbstractIndexSampler,
    AbstractTeacher as AbstractTeacher,
    AdaptiveEMATeacher as AdaptiveEMATeacher,
    ConstantCurriculum as ConstantCurriculum,
    DiscreteLogNormal as DiscreteLogNormal,
    DoublingCurriculum as DoublingCurriculum,
    EMATeacher as EMATeacher,
    FixedGrid as FixedGrid,
    karras_times as karras_times,
    KarrasGrid as KarrasGrid,
    SqrtCurriculum as SqrtCurriculum,
    StopGradientTeacher as StopGradientTeacher,
    UniformIndex as UniformIndex,
)
from .diffusion import (
    DenoisingTrainer as DenoisingTrainer,
    diffusion_pretraining as diffusion_pretraining,
    FlowMatchingTrainer as FlowMatchingTrainer,
    LearnedVelocity as LearnedVelocity,
)
from .ect import ect as ect, ECTTrainer as ECTTrainer
from .fit import fit as fit
from .pairing import (
    AbstractPairing as AbstractPairing,
    CoupledNoise as CoupledNoise,
    ExactVelocity as ExactVelocity,
    ODEStep as ODEStep,
)
from .staged import staged_shared as staged_shared, StagedConsistencyTraining as StagedConsistencyTraining
from .state import TrainState as TrainState
from .tuning import PretrainThenTune as PretrainThenTune
