"""Serving side: reads the model repository, preprocesses inputs, runs onnxruntime.

Never imports torch or sklearn.
"""
