"""Pure ML shared by more than one model pipeline (compiled trees for serving and their MLflow parity log)."""
