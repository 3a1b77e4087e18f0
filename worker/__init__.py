"""The RQ side: the training job (`worker.tasks.train`) and `python -m worker`."""
