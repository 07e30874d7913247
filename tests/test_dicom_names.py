"""Structure names: synonyms and laterality map to canonical names, overrides win, the report is complete."""

from __future__ import annotations

import pytest

from protocols.dicom.names import NameOverrideError, build_name_table, is_body, match_names, normalise


@pytest.fixture(scope="module")
def table(protocol):
    return build_name_table(protocol)


@pytest.mark.parametrize(("roi", "canonical"), [
    ("Cord", "SpinalCord"), ("SC", "SpinalCord"), ("Spinal_Cord", "SpinalCord"), ("spinal cord", "SpinalCord"),
    ("BrainStem", "Brainstem"), ("Brain_Stem", "Brainstem"),
    ("Parotid_L", "LeftParotid"), ("L_Parotid", "LeftParotid"), ("Parotid L", "LeftParotid"),
    ("LParotid", "LeftParotid"), ("Lt Parotid", "LeftParotid"), ("Parotid_R", "RightParotid"),
    ("Right Parotid", "RightParotid"), ("Oesophagus", "Esophagus"), ("Bone_Mandible", "Mandible"),
    ("PTV_70", "PTV70"), ("PTV70", "PTV70"), ("PTV_7000", "PTV70"), ("PTV 70 Gy", "PTV70"), ("PTV70.0", "PTV70"),
    ("ptv_5600cGy", "PTV56"), ("PTV_63", "PTV63"),
])
def test_common_spellings_map_to_the_protocol_names(table, roi, canonical):
    assert table.lookup(roi)[0] == canonical


@pytest.mark.parametrize("roi", ["SpinalCord_PRV5", "PTV70_eval", "PTV_7", "Parotids", "Lens_L", "z_ring", "Cord+3mm"])
def test_derived_and_unknown_structures_do_not_match(table, roi):
    assert table.lookup(roi)[0] is None


def test_match_report_lists_matched_unmatched_missing_and_clashes(table):
    match = match_names(["Cord", "SpinalCord", "Parotid_L", "PTV_70", "BODY", "PTV70_eval"], table)
    assert match.matched == {"SpinalCord": "SpinalCord", "LeftParotid": "Parotid_L", "PTV70": "PTV_70"}
    assert match.how["SpinalCord"] == "exact" and match.how["LeftParotid"] == "synonym"
    assert match.unmatched == ["BODY", "PTV70_eval"]
    assert set(match.missing) == {"Brainstem", "RightParotid", "Esophagus", "Larynx", "Mandible", "PTV63", "PTV56"}
    assert match.ambiguous == {"SpinalCord": ["SpinalCord", "Cord"]}


def test_site_override_file_maps_local_names_and_beats_the_table(protocol, tmp_path):
    overrides = tmp_path / "site.yaml"
    overrides.write_text("SpinalCord: [Myelon, 'Cord 2']\nLeftParotid: Parotis li\n")
    table = build_name_table(protocol, overrides)
    assert table.lookup("Myelon") == ("SpinalCord", "override")
    assert table.lookup("cord_2") == ("SpinalCord", "override")
    assert table.lookup("Parotis Li")[0] == "LeftParotid"
    match = match_names(["Cord", "Cord 2"], table)
    assert match.matched["SpinalCord"] == "Cord 2"


@pytest.mark.parametrize(("text", "message"), [
    ("Spinal: [Cord]", "not a structure of protocol hn-openkbp"),
    ("SpinalCord: {a: b}", "expected a name or a list of names"),
    ("- SpinalCord", "expected a mapping"),
    ("SpinalCord: [X]\nBrainstem: [x]", "listed under both"),
    ("SpinalCord: [", "not a readable YAML file"),
])
def test_bad_override_files_are_rejected_naming_the_file(protocol, tmp_path, text, message):
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(NameOverrideError, match=message) as info:
        build_name_table(protocol, path)
    assert str(path) in str(info.value)


def test_missing_override_file_is_a_clear_error(protocol, tmp_path):
    with pytest.raises(NameOverrideError, match="not found"):
        build_name_table(protocol, tmp_path / "absent.yaml")


def test_body_is_recognised_by_type_or_name():
    assert is_body("Skin", "") and is_body("anything", "external") and not is_body("PTV70", "PTV")
    assert normalise(" PTV-70.0 Gy") == "ptv70gy"
