from .base import AbstractFlowMap as AbstractFlowMap
from .exact import ExactFlowMap as ExactFlowMap
from .learned import FlowMap as FlowMap, velocity_scalings as velocity_scalings
from .slice import ConsistencySlice as ConsistencySlice
