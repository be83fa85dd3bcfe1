"""aiops: train PyTorch models on SageMaker, serve them, infrastructure as code."""

__version__ = "0.1.0"
