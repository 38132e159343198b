"""Exact oracles for staged consistency training and the bounds of Li, Huang and Wei (theory.md)."""

from ._bounds import (
    gaussian_flow_lipschitz as gaussian_flow_lipschitz,
    theorem1_bound as theorem1_bound,
    theorem1_required_steps as theorem1_required_steps,
)
from ._decomposition import (
    ErrorDecomposition as ErrorDecomposition,
    stage_error_terms as stage_error_terms,
    staged_error_decomposition as staged_error_decomposition,
    StageErrorTerms as StageErrorTerms,
)
from ._dirac_oracle import dirac_staged_ct as dirac_staged_ct, DiracStagedCT as DiracStagedCT
from ._gaussian_oracle import (
    ddim_factors as ddim_factors,
    exact_factors as exact_factors,
    GaussianStagedCT as GaussianStagedCT,
    stage_grid as stage_grid,
    staged_ct_gaussian as staged_ct_gaussian,
    staged_ct_gaussian_w2 as staged_ct_gaussian_w2,
)
from ._lipschitz import (
    gaussian_flow_map_lipschitz as gaussian_flow_map_lipschitz,
    jacobian_spectral_norms as jacobian_spectral_norms,
    lipschitz_estimate as lipschitz_estimate,
    staged_lipschitz as staged_lipschitz,
)
