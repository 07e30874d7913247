"""The one "largest connected part" rule (protocols.masks), used by the CT and MR body outlines."""

import numpy as np

from protocols.masks import largest_component


def test_largest_component_keeps_the_biggest_part_only():
    mask = np.zeros((12, 12, 12), bool)
    mask[1:4, 1:4, 1:4] = True    # 27 voxels
    mask[6:11, 6:11, 6:11] = True  # 125 voxels
    kept = largest_component(mask)
    assert kept.sum() == 125 and kept[8, 8, 8] and not kept[2, 2, 2]
    assert mask.sum() == 152, "the input is left as it was"


def test_empty_and_single_part_masks_come_back_unchanged():
    empty = np.zeros((4, 4, 4), bool)
    assert not largest_component(empty).any()
    one = np.zeros((4, 4, 4), bool)
    one[1:3, 1:3, 1:3] = True
    np.testing.assert_array_equal(largest_component(one), one)
