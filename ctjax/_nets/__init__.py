from .base import AbstractNetwork as AbstractNetwork
from .conv import ConvNet as ConvNet
from .embeddings import (
    AbstractEmbedding as AbstractEmbedding,
    FourierEmbedding as FourierEmbedding,
    SinusoidalEmbedding as SinusoidalEmbedding,
)
from .linear import LinearNet as LinearNet
from .mlp import MLP as MLP
