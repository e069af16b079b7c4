"""Runtime inference engine: image encoder (ONNX Runtime), provider selection, preprocessing."""
