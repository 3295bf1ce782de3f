"""The forecaster's estimators under their pre-move path: a compatibility alias, not a home.

Until the model folders (commit e34d56d) these classes lived here, so forecasters registered before
then name `mlops_assets.ml.estimators.<Class>` in their skops file and in their MLmodel's
`skops_trusted_types`; skops imports that path to rebuild them. Re-exporting the classes (the same
objects) keeps those versions loadable by serving, rollback and champion rescoring;
`SKOPS_TRUSTED_TYPES` trusts both paths.

It can go, with the `LEGACY_MODULE` names in `mlops_assets.atmos.estimators.SKOPS_TRUSTED_TYPES`,
once no registry version that may still be loaded was logged before the move (delete or re-log those).
Import nothing from here in new code.
"""

from mlops_assets.atmos.estimators import LastValue, LastValueDelta, RegimeInteractions, ResidualBoost, TreeFeatures

__all__ = ["LastValue", "LastValueDelta", "RegimeInteractions", "ResidualBoost", "TreeFeatures"]
