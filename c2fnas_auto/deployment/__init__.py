"""Sharing and deploying trained models: model zips, TorchScript / ONNX export, MONAI bundles."""
