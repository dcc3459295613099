"""What classify_plm.py and export_plm.py run: the PyTorch classifier, the torch-free ONNX classifier and
the ONNX export. Sits above data_load/ and utils/, beside training/. Importing this package imports
nothing heavy: the ONNX classifier must load without torch."""
