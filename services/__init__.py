"""The HTTP services, in layers: `serving` (no Flask), `web` (HTTP plumbing), then the blueprint
packages `api` and `predictor`, which never import each other; `app.create_app` joins them."""
