"""The encoder's runtimes behind the one `dc.nlp.encoder.Encoder` interface.

- `tf_hub`: a TF-Hub-style SavedModel (a folder such as the one `make export` writes, or any
  handle `tensorflow_hub.load` understands), tokeniser inside the graph.
- `onnx`: ONNX Runtime on the ONNX export of the same weights (`dc.nlp.onnx_export`), fp32 or
  int8, tokenised outside the graph by the HF `tokenizers` package, with length-aware batching.

Each module imports its runtime only when a model is loaded. `DC_ENCODER_BACKEND` chooses.
"""
