"""The one "largest connected part" rule (protocols.masks), used by the body outlines and seg post-processing."""

import numpy as np

from protocols.masks import largest_component


def test_largest_component_keeps_the_biggest_part_only():
    mask = np.zeros((12, 12, 12), bool)
    mask[1:4, 1:4, 1:4] = True    # 27 voxels
    mask[6:11, 6:11, 6:11] = True  # 125 voxels
    kept = largest_component(mask)
    assert kept.sum() == 125 and kept[8, 8, 8] and not kept[2, 2, 2]
    assert mask.sum() == 152, "the input is left as it was"


def test_corner_connectivity_joins_what_face_connectivity_splits():
    mask = np.zeros((6, 6, 6), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = mask[3, 3, 3] = True  # a diagonal line: voxels touch at corners only
    mask[5, 0:2, 0] = True                                # two face-connected voxels
    assert largest_component(mask, connectivity=3).sum() == 3
    assert largest_component(mask, connectivity=1).sum() == 2


def test_empty_and_single_part_masks_come_back_unchanged():
    empty = np.zeros((4, 4, 4), bool)
    assert not largest_component(empty).any()
    one = np.zeros((4, 4, 4), bool)
    one[1:3, 1:3, 1:3] = True
    np.testing.assert_array_equal(largest_component(one), one)
