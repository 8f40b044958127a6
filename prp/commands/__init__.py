"""The command-line entry layer: `prp-train` (and the top-level train.py shim) call these `main`s.

Entry code may import prp.toy (the embedded default); production code under prp/ never does.
"""
