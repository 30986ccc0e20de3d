"""Value learning: model losses, TD-error models, continuous-time evaluation and return distributions (suite II)."""
