"""The maths of learning with noisy labels, as pure functions on tensors and arrays.

Losses (DeFT's dual-prompt loss, GCE, SCE, ELR), selection rules and their scores, the GMM clean
posterior, Robust Similarity's and Co-Reg's formulas. Nothing here builds a model, reads a file or
trains: the scripts call these functions, and models never import them.
"""
