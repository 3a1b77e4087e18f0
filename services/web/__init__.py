"""The HTTP plumbing every blueprint shares: context, auth, bodies, errors, metrics, health.

It imports `shared` and `services.serving`, never `services.api` or `services.predictor`.
"""
