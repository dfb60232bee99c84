"""The Python face of flyt: one function per command, each taking a typed, validated config.

``import flyt`` exposes these lazily (``flyt.score``, ``flyt.ScoreConfig``, ...), so that importing
the package stays cheap; see docs/api.md.
"""
