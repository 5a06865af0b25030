"""ONNX export with a parity check, and TensorRT engine builds."""
