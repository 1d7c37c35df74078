"""Interoperability with other SE(3)-Transformer implementations."""
