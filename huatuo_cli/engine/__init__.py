"""The inference engine: image encoder (ONNX Runtime) and language model (llama.cpp)."""
