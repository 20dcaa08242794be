"""Studies: thin loops over the pipeline's stages (bdk.pipeline) that compare settings and write a report folder.

- classification.py: the KL-weight study, teacher families, shifted digits (`bdk experiment kl-weight|teachers|digits`)
- uci.py: the UCI regression benchmark (`bdk experiment uci`)
"""
