"""The digits pipeline: 8x8 handwritten digits -> warehouse table -> Ray Tune search -> champion.

`dataset` (validation, split) and `families` (the classifier and its neighbour index) and `png`
(turning a drawing into the dataset's 8x8 form) are pure; `search` is the Ray trainable; `source`,
`table`, `assets` and `checks` are the Dagster side.
"""
