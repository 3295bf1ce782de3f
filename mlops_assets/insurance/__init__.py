"""The insurance pipeline: policy records -> warehouse table -> Ray Tune search -> champion.

`dataset` (data contract, validation, synthetic sample) and `families` (the model pipelines and the
seeded split) are pure; `search` is the Ray side; `source`, `assets` and `checks` are the Dagster side.
"""
