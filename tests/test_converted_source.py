"""The link from a converted Detectron2 file back to its pretraining checkpoint: present only in
our dict payloads; any other pickle has none."""

import pickle

from detection.convert import read_source


def test_a_pickle_that_is_not_a_dict_has_no_source(tmp_path):
    path = tmp_path / "list.pkl"
    with open(path, "wb") as f:
        pickle.dump(["__source__", "/runs/a/model_final.pth"], f)
    assert read_source(str(path)) is None


def test_our_payload_names_its_source(tmp_path):
    path = tmp_path / "ours.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {}, "__source__": "/runs/a/model_final.pth"}, f)
    assert read_source(str(path)) == "/runs/a/model_final.pth"
