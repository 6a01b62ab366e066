"""Language models and their data: loading a model from a hub id or a local directory, hook points
in TransformerLens names, forwards resumed at a hook, dataset rows, the s1 think/answer layout.

Imports `core/` (and the typed configs) only.
"""
