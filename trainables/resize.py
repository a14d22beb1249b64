"""How evaluation brings an image to the model's square input, by name: a checkpoint records the
one it was validated with, and is scored that way ever after (`transforms.eval_transform`)."""

from __future__ import annotations

EVAL_RESIZES = ("crop", "squash")  # shorter side + centre crop; the square resize of older versions
EVAL_RESIZE = "crop"  # what this version validates with
