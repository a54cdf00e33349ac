"""The pre-release quantization check: does the quantized model on the board keep the features?"""
