"""What every model's search shares: the one Ray Tune runner, the search-asset decorator, the search
step (parent run, search, refit logged to the run), the `TunedModel` handed to promotion, and the
`TuningResource` that sizes and places the searches.
"""
