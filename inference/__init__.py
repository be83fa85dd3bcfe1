"""Inference: the handler contract, the server that runs it, the clients that call it, and export.

- :mod:`.contract` — the one protocol the server calls (``InferenceHandler``), ``Context``;
  :mod:`.handler` — the SageMaker PyTorch handler contract behind it (``model_fn``, ``input_fn``,
  ``predict_fn``, ``output_fn`` / ``transform_fn``), with :mod:`.codecs` (body formats, Accept),
  :mod:`.errors` (typed errors handler scripts raise) and :mod:`.streaming` (what a streamed answer is);
- :mod:`.serving` — ``aiops serve``: the supervisor, its workers, their HTTP layer and scheduling;
- :mod:`.client` — ``aiops invoke``: local servers and deployed endpoints;
- :mod:`.export` — ``aiops export``: TorchScript, ONNX, int8;
- :mod:`.artifacts` — a run's model as SageMaker's ``model.tar.gz`` layout (``aiops model package``).
"""
