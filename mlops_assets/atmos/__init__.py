"""The atmos pipeline: hourly station observations -> cleaned features -> 72 h -> 24 h windows ->
Ray Tune search -> champion.

`observations`, `cleaning`, `quality`, `forecast_features`, `dataset` (windows and the chronological
split), `estimators`, `families` and `metrics` are pure; `kma` and `csv_times` read the sources;
`search` is the Ray side (search spaces, trainable, refit); `source`, `model_io`, `plots`, `assets`,
`checks` and `schedules` are the Dagster and MLflow side.
"""
