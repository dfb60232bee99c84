"""flyt: Filter Like You Test. Learned data filtering for CLIP pretraining.

Layers (arrows point down): cli -> api -> train -> models -> scorers/sample -> engines -> io.
"""

__version__ = "0.1.0"
