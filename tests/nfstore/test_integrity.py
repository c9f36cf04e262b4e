"""Integrity: stimulus identity across datasets, leakage, locks, interrupted swaps, stale sets."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import nfstore
from nfstore import _layout, copies, identity
from nfstore.augment import AugmentConfig, augment
from nfstore.embeddings import embed_store, register_pool
from nfstore.leakage import find_leakage
from nfstore.synth._signal import overlap_coco_ids


def test_identity_rules() -> None:
    rule = identity.identity_from_name
    assert rule("bold5000", "bold5000/COCO_train2014_000000000036") == "coco/36"
    assert rule("bold5000", "bold5000/n01518878_14910") == "imagenet/n01518878_14910"
    assert rule("god", "god/n01518878_14910") == "imagenet/n01518878_14910"
    assert rule("god", "god/n01518878") == "god/n01518878"  # imagery: a category, no image
    assert rule("imnet", "imnet/n01518878/n01518878_14910") == "imagenet/n01518878_14910"
    assert rule("bold5000", "bold5000/kitchen3") == "bold5000/kitchen3"
    assert rule("pool", "pool/a/b/c") == "pool/a/b/c"


def test_nsd_identity_from_coco_ids(world_ro: dict[str, Path]) -> None:
    info = pd.read_csv(world_ro["base"] / "nsd/nsddata/experiments/nsd/nsd_stim_info_merged.csv")
    tab = nfstore.open_store(world_ro["store"]).stimuli("nsd")
    got = dict(zip(tab["stimulus"].values, tab["identity"].values))
    for nsd_id, coco in zip(info["nsdId"], info["cocoId"]):
        assert got[f"nsd/{nsd_id:05d}"] == f"coco/{coco}"
    assert info["BOLD5000"].sum() == 6  # planted: NSD pictures BOLD5000 also showed
    assert set(info["cocoId"][info["BOLD5000"]]) == set(overlap_coco_ids(6))


def test_fingerprint_survives_reencoding_and_resizing() -> None:
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        img = Image.open(f).convert("RGB")
    a = np.asarray(img)
    buf = io.BytesIO()
    img.resize((img.width // 2, img.height // 2), Image.Resampling.BICUBIC).save(
        buf, format="JPEG", quality=70)
    b = np.asarray(Image.open(buf).convert("RGB"))
    other = np.asarray(img.transpose(Image.Transpose.FLIP_TOP_BOTTOM))
    fa, fb, fo = (identity.fingerprint(x) for x in (a, b, other))
    assert fa.startswith(copies.PREFIX) and fa != fo
    assert identity.near_pairs([fa], [fb, fo]) == [(0, 0)]  # the copy, not the other image
    assert identity.near_pairs([fa], [""]) == []  # a missing fingerprint never matches


def _planted(base: Path, store: nfstore.Store) -> set[tuple[str, str, str]]:
    """(held-out id, copy id, by) pairs the generators planted, worked out from the raw trees."""
    info = pd.read_csv(base / "nsd/nsddata/experiments/nsd/nsd_stim_info_merged.csv")
    nsd = store.dataset("nsd/subj01")
    bold = store.dataset("bold5000/CSI1")
    split_of = {**dict(zip(nsd.stimulus.values, nsd.split.values)),
                **dict(zip(bold.stimulus.values, bold.split.values))}
    out = set()
    for nsd_id, coco in zip(info["nsdId"][info["BOLD5000"]], info["cocoId"][info["BOLD5000"]]):
        a, b = f"nsd/{nsd_id:05d}", f"bold5000/COCO_train2014_{coco:012d}"
        if a in split_of and b in split_of:
            if split_of[a] == "test" and split_of[b] == "train":
                out.add((a, b, "identity"))
            if split_of[b] == "test" and split_of[a] == "train":
                out.add((b, a, "identity"))
    test = sorted((base / "god/images/test").glob("*.JPEG"))
    for k, src in enumerate(test[:5]):
        if k < 3:
            out.add((f"god/{src.stem}", f"imnet/{src.stem.split('_')[0]}/{src.stem}",
                     "identity"))
        else:
            out.add((f"god/{src.stem}", f"imnet/misc/copy_{k}", "fingerprint"))
    return out


def test_leakage_finds_exactly_the_planted_copies(world_ro: dict[str, Path],
                                                  tmp_path: Path) -> None:
    store = nfstore.open_store(world_ro["store"])
    report = find_leakage(store)
    found = {(d.held_out, d.duplicate, d.by) for d in report.duplicates}
    planted = _planted(world_ro["base"], store)
    assert {p for p in planted if p[0].startswith("nsd/")}  # NSD test -> BOLD5000 train exists
    assert found == planted
    counts = report.counts()
    assert counts["god -> imnet"] == 5
    assert counts["nsd -> bold5000"] == sum(p[0].startswith("nsd/") for p in planted)
    out = tmp_path / "leak.json"
    from nf.main import _register, cli

    _register()
    res = CliRunner().invoke(cli, ["leakage", str(world_ro["store"]), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "god -> imnet: 5" in res.output
    doc = json.loads(out.read_text())
    assert doc["leaking_held_out"] == len({p[0] for p in planted})
    assert len(doc["duplicates"]) == len(planted)


def test_augment_never_synthesizes_held_out_copies(world: dict[str, Path]) -> None:
    store = world["store"]
    excluded = find_leakage(nfstore.open_store(store)).excluded()
    pool = [s for s in nfstore.open_store(store).stimuli("imnet")["stimulus"].values]
    eligible = [s for s in pool if s not in excluded]
    assert len(eligible) == len(pool) - 5
    summary = augment(store, "god/sub-01", AugmentConfig(pool="imnet", n=len(eligible),
                                                         alpha=10.0, name="all"))
    assert summary.excluded == 5
    made = set(nfstore.open_store(store).synthetic_stimuli("god/sub-01", "all").tolist())
    assert made == set(eligible) and not made & excluded
    with pytest.raises(nfstore.OptionError, match=r"has 40 embedded images .*\(5 are"):
        augment(store, "god/sub-01", AugmentConfig(pool="imnet", n=len(pool), alpha=10.0,
                                                   name="more"))
    with pytest.raises(nfstore.OptionError, match="^pool: 'nsd' is a dataset"):
        augment(store, "god/sub-01", AugmentConfig(pool="nsd", n=5, alpha=10.0))


def test_synthetic_set_is_stale_after_reembed(world: dict[str, Path], tmp_path: Path) -> None:
    from nfstore.tiny import write_tiny_encoder

    store = world["store"]
    augment(store, "nsd/subj01", AugmentConfig(pool="imnet", n=10, alpha=10.0, name="syn"))
    assert nfstore.open_store(store).betas("nsd/subj01", synthetic=True).sizes["trial"] == 90
    other = write_tiny_encoder(tmp_path / "enc2", seed=1)["hf"]
    embed_store(store, "ip-adapter-sdxl", other, workers=0, batch_size=128, overwrite=True)
    with pytest.raises(nfstore.StoreError, match=r"synthetic/syn: built from other "
                       r"ip-adapter-sdxl embeddings.*--name syn --overwrite"):
        nfstore.open_store(store).betas("nsd/subj01", synthetic=True)
    augment(store, "nsd/subj01", AugmentConfig(pool="imnet", n=10, alpha=10.0, name="syn"),
            overwrite=True)
    assert nfstore.open_store(store).betas("nsd/subj01", synthetic=True).sizes["trial"] == 90


def test_synthetic_set_is_stale_after_reingest(world: dict[str, Path]) -> None:
    store = world["store"]
    augment(store, "nsd/subj01", AugmentConfig(pool="imnet", n=10, alpha=10.0, name="syn"))
    nfstore.ingest("nsd", world["base"] / "nsd", store, overwrite=True)  # same files: still ok
    assert "syn" in nfstore.open_store(store).synthetic_sets("nsd/subj01")
    nfstore.open_store(store).betas("nsd/subj01", synthetic=True)
    nfstore.ingest("nsd", world["base"] / "nsd", store, overwrite=True, normalization="run")
    with pytest.raises(nfstore.StoreError, match="built from another ingest of nsd/subj01"):
        nfstore.open_store(store).betas("nsd/subj01", synthetic=True)


def test_embed_overwrite_keeps_the_old_cache_until_the_new_one_is_complete(
        world: dict[str, Path], tmp_path: Path) -> None:
    from nfstore.tiny import write_tiny_encoder

    store = world["store"]
    before = nfstore.open_store(store).embeddings("ip-adapter-sdxl").values
    other = write_tiny_encoder(tmp_path / "enc2", seed=1)["hf"]

    def stop(count: int) -> None:
        raise KeyboardInterrupt  # killed after the first batch of the new cache

    with pytest.raises(KeyboardInterrupt):
        embed_store(store, "ip-adapter-sdxl", other, workers=0, batch_size=64, overwrite=True,
                    on_batch=stop)
    np.testing.assert_array_equal(
        nfstore.open_store(store).embeddings("ip-adapter-sdxl").values, before)
    summary = embed_store(store, "ip-adapter-sdxl", other, workers=0, batch_size=64,
                          overwrite=True)
    assert summary.cached == 64  # the interrupted build resumed where it stopped
    after = nfstore.open_store(store).embeddings("ip-adapter-sdxl")
    assert after.sizes["stimulus"] == before.shape[0]
    assert not np.allclose(after.values, before)
    assert not (store / "_staging" / "embeddings.ip-adapter-sdxl").exists()


def test_second_writer_is_refused_with_the_holders_pid(world: dict[str, Path]) -> None:
    store = world["store"]
    with _layout.writing(store, "nf test"):
        for call in (lambda: augment(store, "nsd/subj01", AugmentConfig(pool="imnet", n=5,
                                                                        alpha=1.0)),
                     lambda: embed_store(store, "ip-adapter-sdxl", world["encoder"], workers=0),
                     lambda: nfstore.ingest("nsd", world["base"] / "nsd", store,
                                            overwrite=True)):
            with pytest.raises(nfstore.StoreError, match=f"process {os.getpid()}, nf test"):
                call()
    assert not (store / _layout.LOCK_FILE).exists()
    augment(store, "nsd/subj01", AugmentConfig(pool="imnet", n=5, alpha=1.0))  # free again


def test_every_writer_recovers_an_interrupted_swap(world: dict[str, Path]) -> None:
    store = world["store"]
    # a commit killed between its two renames: the old version waits in _trash
    (store / "_trash/embeddings").mkdir(parents=True)
    os.rename(store / "embeddings/ip-adapter-sdxl",
              store / "_trash/embeddings/ip-adapter-sdxl@1-2")
    st = nfstore.open_store(store)
    assert st.embedding_models() == []  # reading does not repair (nor write anything)
    assert (store / "_trash/embeddings/ip-adapter-sdxl@1-2").is_dir()
    register_pool(store, world["base"] / "pool", "imnet")  # any writer recovers first
    assert nfstore.open_store(store).embedding_models() == ["ip-adapter-sdxl"]
    assert not list((store / "_trash").rglob("*@*"))


def test_multi_subject_ingest_keeps_earlier_subjects_when_a_later_one_fails(
        nsd_raw: Path, tmp_path: Path) -> None:
    raw = Path(shutil.copytree(nsd_raw, tmp_path / "nsd"))
    bad = raw / "nsddata_betas/ppdata/subj02/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    path = bad / "betas_session02.nii.gz"
    path.write_bytes(path.read_bytes()[:4000])  # truncated: found only when read
    store = tmp_path / "nf.zarr"
    with pytest.raises(nfstore.ReaderError, match="betas_session02.nii.gz"):
        nfstore.ingest("nsd", raw, store)
    st = nfstore.open_store(store)
    assert st.subjects() == ["nsd/subj01"] and st.incomplete() == {}
    from nfstore.schema import validate_store

    assert validate_store(st) == []


def test_disk_full_keeps_the_resumable_progress(nsd_raw: Path, tmp_path: Path) -> None:
    import errno

    store = tmp_path / "nf.zarr"

    def full(key: str, label: str) -> None:
        if label == "session 2":
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(nfstore.StoreError, match=r"stopped after 2 of 3 blocks \(OSError.*No "
                       r"space.*rerun the same command to resume"):
        nfstore.ingest("nsd", nsd_raw, store, subjects=["1"], on_block=full)
    assert "nsd/subj01" in nfstore.open_store(store).incomplete()
    summary = nfstore.ingest("nsd", nsd_raw, store, subjects=["1"])
    assert summary.resumed == ["nsd/subj01"]
    ref = tmp_path / "ref.zarr"
    nfstore.ingest("nsd", nsd_raw, ref, subjects=["1"])
    np.testing.assert_array_equal(nfstore.open_store(store).betas("nsd/subj01").values,
                                  nfstore.open_store(ref).betas("nsd/subj01").values)
