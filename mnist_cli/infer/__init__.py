"""Reading digits, with the light install (no torch): open and run a model file, turn images
into MNIST-like inputs, predict, evaluate, serve. A .pt model and --plot need the train extra.
"""
