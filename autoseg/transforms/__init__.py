"""One case between its image files and a configuration's grid: crop, normalise, resample, transpose, and back.

Shared by preprocessing (training data) and inference (new images), so both see exactly the same transform, and a
prediction goes back to exactly the input's geometry.
"""
