"""Trainers: pure `init`/`step` over an immutable `TrainState`, and `fit` to run them."""

from ._adaptive_weighting import AdaptiveWeighting as AdaptiveWeighting
from ._base import (
    AbstractEMATrainer as AbstractEMATrainer,
    AbstractTrainer as AbstractTrainer,
    TrainState as TrainState,
)
from ._consistency import cd as cd, ConsistencyTrainer as ConsistencyTrainer, ct as ct, ict as ict
from ._continuous import (
    ContinuousConsistencyTrainer as ContinuousConsistencyTrainer,
    scd as scd,
    sct as sct,
    Tangents as Tangents,
)
from ._coupling import (
    AbstractCoupling as AbstractCoupling,
    Independent as Independent,
    MinibatchOT as MinibatchOT,
    optimal_assignment as optimal_assignment,
)
from ._curricula import (
    AbstractCurriculum as AbstractCurriculum,
    ConstantCurriculum as ConstantCurriculum,
    DoublingCurriculum as DoublingCurriculum,
    SqrtCurriculum as SqrtCurriculum,
)
from ._diffusion import (
    AbstractPretrainingTrainer as AbstractPretrainingTrainer,
    DenoisingTrainer as DenoisingTrainer,
    diffusion_pretraining as diffusion_pretraining,
    FlowMatchingTrainer as FlowMatchingTrainer,
    LearnedVelocity as LearnedVelocity,
)
from ._ect import ect as ect, ECTTrainer as ECTTrainer
from ._fit import DATA_AXIS as DATA_AXIS, fit as fit
from ._flow_map_distillation import FlowMapDistillationTrainer as FlowMapDistillationTrainer
from ._flow_map_draw import time_pairs as time_pairs
from ._grids import (
    AbstractGrid as AbstractGrid,
    FixedGrid as FixedGrid,
    karras_times as karras_times,
    KarrasGrid as KarrasGrid,
)
from ._index_sampling import (
    AbstractIndexSampler as AbstractIndexSampler,
    DiscreteLogNormal as DiscreteLogNormal,
    UniformIndex as UniformIndex,
)
from ._meanflow import adaptive_weights as adaptive_weights, meanflow as meanflow, MeanFlowTrainer as MeanFlowTrainer
from ._pairing import (
    AbstractPairing as AbstractPairing,
    CoupledNoise as CoupledNoise,
    ExactVelocity as ExactVelocity,
    ODEStep as ODEStep,
)
from ._staged import (
    staged_shared as staged_shared,
    StagedConsistencyTraining as StagedConsistencyTraining,
    StageProgress as StageProgress,
)
from ._teachers import (
    AbstractTeacher as AbstractTeacher,
    AdaptiveEMATeacher as AdaptiveEMATeacher,
    EMATeacher as EMATeacher,
    StopGradientTeacher as StopGradientTeacher,
)
from ._time_sampling import lognormal_times as lognormal_times
from ._tuning import PretrainThenTune as PretrainThenTune
from ._velocity_estimate import (
    AbstractVelocityEstimate as AbstractVelocityEstimate,
    OneSample as OneSample,
    ReferenceBatch as ReferenceBatch,
)
