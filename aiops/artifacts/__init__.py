"""Model artifacts: the one place that knows what a model is on disk and in S3, for every command.

``aiops serve``, ``aiops export``, ``aiops model package`` and ``aiops deploy --model`` all go through it:

- ``programs``: which script serves a model (``SAGEMAKER_PROGRAM``), read from its code, never imported;
- ``resolve``: a local model to serve or export (a model.tar.gz, a folder, a local run's model and code);
- ``package``: ``model.tar.gz`` in the SageMaker layout (``aiops model package``);
- ``repack``: a training job's model.tar.gz with its code bundle in ``code/`` (as ``estimator.deploy()``);
- ``upload``: content-addressed uploads to the stack's bucket (a model.tar.gz, a folder of model files);
- ``s3prefix``: a model that is an S3 prefix of files (listing, tensor sizes through ranged GETs);
- ``endpoint``: what ``deploy --model`` names, turned into the endpoint's model URI and program.

Torch-free, and boto3 only inside functions: the rooms that may not import each other (serving, export,
infra) share it. What needs torch (loading a handler) or the stack's configuration (the GPU-fit check,
``aiops.infra.fitcheck``) stays in its room and calls this.
"""
