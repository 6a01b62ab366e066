"""Language models and their data: loading a model from a hub id or a local directory, hook points
in TransformerLens names, forwards resumed at a hook, dataset rows, the reasoning layouts (s1,
<think>, none).

Imports `core/` (and the typed configs) only.
"""
