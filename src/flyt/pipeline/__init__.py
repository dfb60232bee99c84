"""Entry points that run a whole job over a pool: scoring (``flyt.pipeline.score``)."""
