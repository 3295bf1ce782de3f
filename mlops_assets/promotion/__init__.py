"""The promotion rule and the champion-asset factory every model pipeline uses, and the champion CLI."""
