"""Training and export, with the train extra (torch): the networks, their recipes, the loop,
checkpoints, resume, torchrun, augmentation and the ONNX export. `recipes` alone needs no torch.
"""
