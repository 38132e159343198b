from .fields import denoiser as denoiser, score as score, velocity as velocity
from .flow_map import flow_map as flow_map
from .gaussian import gaussian_flow_map as gaussian_flow_map
