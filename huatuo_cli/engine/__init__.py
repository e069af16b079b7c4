"""The inference engine: image encoders (ONNX Runtime, llama.cpp mtmd), preprocessing, provider
selection, and the language model on llama.cpp."""
