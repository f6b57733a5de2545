"""Experiment management: grid YAMLs, the sweep runner, the results collector, the paper's numbers
and figures. Talks to the training scripts only through their command lines and run folders, and
imports no torch, so it runs on a login node."""
