"""The prediction service without HTTP: the model cache and the one path from pixels to answers."""
