"""`aiops export`: a trained model as TorchScript, ONNX or int8, verified against the original and
packaged with handlers that keep the original script's behaviour.

:mod:`.pipeline` is the command (resolve, convert, verify, package); :mod:`.samples` the sample
batch it verifies with; :mod:`.convert` the formats; :mod:`.verify` the exported model served as the
container would, compared with the original; :mod:`.package` the model.tar.gz; :mod:`.templates`
the generated ``code/inference.py``.
"""
