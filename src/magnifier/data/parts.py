"""The 8-part label scheme (EANet convention) that MagnifierNet is trained with."""

PART_NAMES = (
    "background",
    "head",
    "torso",
    "upper_arm",
    "lower_arm",
    "upper_leg",
    "lower_leg",
    "foot",
)
NUM_PARTS = len(PART_NAMES)
# Regions the semantic regularization branch erases from: 2 upper + 1 lower by default.
UPPER_BODY = (1, 2, 3, 4)
LOWER_BODY = (5, 6, 7)
