"""The YOLOv8-seg family (n/s/m/l/x) in plain PyTorch, post-processing and weight import."""
