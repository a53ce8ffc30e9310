"""TOAU: task-oriented edge-cloud human action understanding.

The edge turns video into 3D human motion and sends only VQ-VAE codebook indices. The cloud
decodes them, and a language model answers questions about the motion through a learned projector.
Subpackages: io, motion, data, tokenizer, channel, pose, edge, cloud, bench, baselines.
"""
