from .base import AbstractConsistencyModel as AbstractConsistencyModel
from .exact import ExactConsistencyFunction as ExactConsistencyFunction
from .function import ConsistencyFunction as ConsistencyFunction
from .scalings import (
    AbstractScalings as AbstractScalings,
    EDMScalings as EDMScalings,
    TrigFlowScalings as TrigFlowScalings,
)
from .staged import StagedConsistencyModel as StagedConsistencyModel
