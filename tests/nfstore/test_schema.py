"""Schema document, validation on open and `validate_store` value checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import zarr

import nfstore
import schemas
from nfstore.schema import manifest, validate_store


def _edit_json(path: Path, edit) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def test_schema_document_is_valid_json_schema() -> None:
    doc = schemas.load("store-v1")
    jsonschema.Draft202012Validator.check_schema(doc)
    assert doc["properties"]["attributes"]["properties"]["nf_schema_version"]["const"] == 1


def test_valid_store_has_no_problems(nsd_store_ro: Path) -> None:
    store = nfstore.open_store(nsd_store_ro)
    assert validate_store(store) == []
    man = manifest(store)
    assert man["subjects"]["nsd/subj01"]["arrays"]["betas"]["dims"] == ["trial", "voxel"]
    assert man["subjects"]["nsd/subj01"]["arrays"]["betas"]["dtype"] == "float32"


def test_wrong_schema_version_fails_on_open(nsd_store: Path) -> None:
    _edit_json(nsd_store / "zarr.json", lambda m: m["attributes"].update(nf_schema_version=2))
    with pytest.raises(nfstore.SchemaError, match="expected nf_schema_version 1; found 2"):
        nfstore.open_store(nsd_store)


def test_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(nfstore.SchemaError, match="expected a NeuroFusion store"):
        nfstore.open_store(tmp_path / "nothing.zarr")


def test_wrong_dims_named_on_open(nsd_store: Path) -> None:
    _edit_json(nsd_store / "nsd/subj01/betas/zarr.json",
               lambda m: m.update(dimension_names=["voxel", "trial"]))
    with pytest.raises(nfstore.SchemaError) as err:
        nfstore.open_store(nsd_store)
    assert "nsd/subj01/arrays/betas/dims" in str(err.value)
    assert "['trial', 'voxel'] was expected" in str(err.value)


def test_missing_attribute_named(nsd_store: Path) -> None:
    _edit_json(nsd_store / "nsd/subj02/zarr.json",
               lambda m: m["attributes"].pop("normalization"))
    with pytest.raises(nfstore.SchemaError, match="subjects/nsd/subj02/attributes: "
                                                  "'normalization' is a required property"):
        nfstore.open_store(nsd_store)


def test_validate_reports_missing_chunks_and_bad_values(nsd_store: Path) -> None:
    chunk = next(p for p in (nsd_store / "nsd/subj01/betas/c").rglob("*") if p.is_file())
    chunk.unlink()
    store = nfstore.open_store(nsd_store)  # metadata still valid
    problems = validate_store(store)
    assert len(problems) == 2, problems
    assert "betas: expected" in problems[0] and "chunks; found" in problems[0]
    # the lost chunk is named by its index and key, never counted as NaN values
    index = tuple(int(i) for i in chunk.relative_to(nsd_store / "nsd/subj01/betas/c").parts)
    assert f"nsd/subj01/betas: chunk {index} (nsd/subj01/betas/c/" in problems[1]
    assert "found none" in problems[1] and "non-finite" not in problems[1]


def test_validate_reports_nonfinite_values_and_interrupted_swaps(nsd_store: Path) -> None:
    arr = zarr.open_array(str(nsd_store / "nsd/subj02/betas"), mode="r+")
    arr[3, 7] = np.inf
    arr[5, 1] = np.nan
    (nsd_store / "_trash/nsd").mkdir(parents=True)
    (nsd_store / "nsd/subj01").rename(nsd_store / "_trash/nsd/subj01@123-456")
    problems = validate_store(nfstore.open_store(nsd_store, check=False))
    assert any("nsd/subj02/betas: 2 non-finite values in 2 of" in p for p in problems), problems
    assert any("interrupted write of nsd/subj01" in p for p in problems), problems
    assert (nsd_store / "_trash/nsd/subj01@123-456").is_dir()  # reading never writes


def test_validate_reports_unknown_stimuli(nsd_store: Path) -> None:
    shutil.rmtree(nsd_store / "stimuli/nsd")
    problems = validate_store(nfstore.open_store(nsd_store))
    assert any("ids are not in /stimuli/nsd" in p for p in problems)


def _decoded_and_recon(store: Path) -> None:
    """One decoded set and one reconstruction set (with metrics) for nsd/subj01."""
    from nfrecon.decoded import write_decoded
    from nfrecon.recon_sets import create_group

    with nfstore.transaction(store, "test") as tx:
        write_decoded(tx, "rr", "nsd/subj01", np.zeros((3, 4), np.float32),
                      np.array(["nsd/00001"] * 3), np.array(["test"] * 3), np.ones(3, bool),
                      np.ones(3, np.int64), {"decoder": "ridge"})
        key = "reconstructions/rr/nsd/subj01"
        staged, _, _ = tx.stage(key, create=False)
        create_group(staged, np.array(["nsd/00001"]), 2, 8).attrs.update(
            {"subject": "nsd/subj01"})
        tx.commit(key)
    m = zarr.open_group(str(store / key), mode="r+").create_group("metrics/raw")
    m.create_array("ssim", data=np.zeros(1), dimension_names=("row",))
    m.attrs.update({"variant": "raw", "metrics": ["ssim"]})


def test_decoded_and_reconstruction_sets_are_validated_when_present(nsd_store: Path) -> None:
    _decoded_and_recon(nsd_store)
    st = nfstore.open_store(nsd_store)
    man = manifest(st)
    assert sorted(man["decoded"]) == sorted(man["reconstructions"]) == ["rr/nsd/subj01"]
    assert man["reconstructions"]["rr/nsd/subj01"]["metrics"]["raw"]["arrays"]["ssim"][
        "dims"] == ["row"]
    assert validate_store(st) == []
    _edit_json(nsd_store / "decoded/rr/nsd/subj01/embedding/zarr.json",
               lambda m: m.update(dimension_names=["row", "token"]))
    _edit_json(nsd_store / "reconstructions/rr/nsd/subj01/metrics/raw/zarr.json",
               lambda m: m["attributes"].pop("variant"))
    problems = validate_store(nfstore.open_store(nsd_store, check=False))
    assert any("decoded/rr/nsd/subj01/arrays/embedding/dims" in p for p in problems), problems
    assert any("reconstructions/rr/nsd/subj01/metrics/raw/attributes: 'variant' is a "
               "required property" in p for p in problems), problems


def test_schema_subject_names_come_from_the_readers() -> None:
    from nfstore.schema import load_schema

    doc = load_schema()
    jsonschema.Draft202012Validator.check_schema(doc)
    names = doc["properties"]["subjects"]["propertyNames"]["pattern"]
    assert names.startswith("^(nsd/(?:subj0[1-8])|bold5000/(?:CSI[1-4])|god/(?:sub-0[1-5])")
    assert doc["$defs"]["subject"]["properties"]["attributes"]["properties"]["dataset"][
        "enum"][:3] == ["nsd", "bold5000", "god"]
