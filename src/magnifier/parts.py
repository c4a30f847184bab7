"""The part and attribute taxonomy shared by the data layer and the model layer.

Both ``magnifier.data`` (label maps, attribute files) and ``magnifier.models`` (the branches
that erase, pool and classify by part) read these small tables; keeping them here lets the
model import nothing from the data layer.
"""

#: The 8-part label scheme (EANet convention) that MagnifierNet is trained with.
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
#: One colour (RGB) per part, the same in every picture the library draws: ranked lists and
#: their legend, the parse command's previews, the notebooks.
PART_COLOURS = (
    (0, 0, 0),        # background
    (255, 200, 0),    # head
    (230, 25, 75),    # torso
    (60, 180, 75),    # upper arm
    (0, 130, 200),    # lower arm
    (145, 30, 180),   # upper leg
    (70, 240, 240),   # lower leg
    (245, 130, 48),   # foot
)
#: Regions the semantic regularization branch erases from: 2 upper + 1 lower by default.
UPPER_BODY = (1, 2, 3, 4)
LOWER_BODY = (5, 6, 7)

#: The four attention maps of the attribute branch, in channel order.
ATTRIBUTE_GROUPS = ("general", "head", "upper", "lower")
#: Sizes of the (general, head, upper, lower) groups of each dataset's attribute vector; the
#: bits themselves are listed in :mod:`magnifier.data.attributes`, which checks these sizes.
GROUP_SIZES = {"market": (5, 2, 11, 12), "duke": (1, 1, 11, 10)}


def group_sizes_for(num_attributes: int) -> tuple[int, int, int, int] | None:
    """The (general, head, upper, lower) group sizes of the layout with that many bits, if any."""
    for sizes in GROUP_SIZES.values():
        if sum(sizes) == num_attributes:
            return sizes
    return None
