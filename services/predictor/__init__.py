"""The prediction component: the hot-reloading model cache, body decoding, the v1 and V2 routes."""
