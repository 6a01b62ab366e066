"""The sparse crosscoder as a small library of its own: train builds it, analyze reads it.

model.py holds the module and its checkpoint format (open it first), loss.py the training
objective and schedules, geometry.py the decoder-norm geometry (relative norms, cosines, classes),
sparse.py the products over active (token, latent) pairs behind the sparse training step,
convert.py the converters to and from the dictionary_learning fork's and Kissane's formats.
"""

from reasondiff.crosscoder.model import CrossCoder, CrossCoderConfig, load_crosscoder, verify_crosscoder

__all__ = ["CrossCoder", "CrossCoderConfig", "load_crosscoder", "verify_crosscoder"]
