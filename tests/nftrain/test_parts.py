"""Config, model, loss and loader, each against a direct computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import nfstore
from nftrain.config import build, example, load
from nftrain.data import batches, load_dataset
from nftrain.losses import info_nce
from nftrain.model import Decoder, ModelSpec

ROOT = Path(__file__).parents[2]


def test_example_configs_load() -> None:
    paper = load(example("paper"))
    assert (paper.adapter_dim, paper.lr, paper.weight_decay, paper.batch_size) == (
        1024, 1e-4, 1e-3, 256)
    assert (paper.temperature, paper.input_noise) == (0.1, 0.15)
    assert load(example("demo-cpu"), ["epochs=3"]).epochs == 3


@pytest.mark.parametrize("values, message", [
    ({"subjects": ["nsd/subj01"], "epoch": 3}, "unknown config keys ['epoch']; valid keys: ["),
    ({"subjects": []}, "subjects: expected at least one subject"),
    ({"subjects": ["a/b"], "batch_size": 1}, "batch_size: expected an integer >= 2"),
    ({"subjects": ["a/b"], "val_fraction": 1.5},
     "val_fraction: expected a finite number in (0, 1); found 1.5"),
    ({"subjects": ["a/b"], "learn_temperature": "maybe"}, "learn_temperature: expected"),
])
def test_config_errors(values: dict, message: str) -> None:
    with pytest.raises(nfstore.OptionError) as err:
        build(values)
    assert message in str(err.value)


def test_sample_output_does_not_depend_on_batch() -> None:
    torch.manual_seed(0)
    model = Decoder(ModelSpec(("a/1", "b/2"), (30, 17), 16, 24, 2, 0.1, 8)).eval()
    xa, xb = torch.randn(5, 30), torch.randn(4, 17)
    full = model({0: (torch.arange(5), xa), 1: (torch.arange(5, 9), xb)}, 9)
    alone = model({0: (torch.tensor([0]), xa[:1])}, 1)
    shuffled = model({1: (torch.tensor([0, 1, 2, 3]), xb), 0: (torch.tensor([4]), xa[:1])}, 5)
    torch.testing.assert_close(full[0], alone[0])
    torch.testing.assert_close(full[0], shuffled[4])
    torch.testing.assert_close(full[5:9], shuffled[:4])
    torch.testing.assert_close(model.embed_subject(1, xb), full[5:9])


def test_info_nce_matches_direct_computation_and_masks_duplicates() -> None:
    rng = np.random.default_rng(0)
    p, t = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))
    stim = np.array([0, 1, 2, 2, 3, 4])
    t[3] = t[2]  # same stimulus, same embedding
    pn = p / np.linalg.norm(p, axis=1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    logits = pn @ tn.T / 0.1
    mask = (stim[:, None] == stim[None, :]) & ~np.eye(6, dtype=bool)
    logits[mask] = -np.inf

    def ce(z: np.ndarray) -> float:
        m = z.max(1, keepdims=True)
        lse = np.log(np.exp(z - m).sum(1)) + m[:, 0]
        return float((lse - np.diag(z)).mean())

    want = 0.5 * (ce(logits) + ce(logits.T))
    got = info_nce(torch.tensor(p), torch.tensor(t), torch.tensor(stim), 0.1)
    assert abs(float(got) - want) < 1e-5
    unmasked = 0.5 * (ce(pn @ tn.T / 0.1) + ce((pn @ tn.T / 0.1).T))
    assert abs(want - unmasked) > 1e-3  # the duplicate really was a false negative before


def test_loader_reads_every_train_trial_once_never_test(train_store_ro: Path, small_cfg) -> None:
    store = nfstore.open_store(train_store_ro)
    cfg = small_cfg(synthetic=["*"])
    data = load_dataset(store, cfg)
    train_ids = {i: set() for i in range(3)}
    val_ids = set()
    for s in data.subjects:
        ds = store.dataset(s.key)
        for src in s.train[:1] + s.val:
            assert (ds.split.values[src.rows] == "train").all()  # no test/imagery rows listed
        train_ids[s.index] |= {data.stimuli[t] for src in s.train for t in src.targets}
        val_ids |= {data.stimuli[t] for src in s.val for t in src.targets}
    assert not val_ids & set().union(*train_ids.values())  # stimulus-disjoint validation
    n_expected = sum(src.rows.size for s in data.subjects for src in s.train)
    seen, mixed = 0, 0
    for b in batches(data, cfg, epoch=0):  # cache_mb=1: the buffer fills and drains repeatedly
        seen += b.size
        mixed += len(b.groups) > 1
        for sub, (pos, x) in b.groups.items():
            assert x.shape[1] == data.subjects[sub].n_voxels and np.isfinite(x).all()
    assert seen == n_expected and mixed > 0
    order = [b.targets.tolist() for b in batches(data, cfg, epoch=0)]
    assert order == [b.targets.tolist() for b in batches(data, cfg, epoch=0)]  # seeded
    assert order != [b.targets.tolist() for b in batches(data, cfg, epoch=1)]
    syn = [s for s in data.subjects if s.key == "nsd/subj01"][0].train[1]
    assert "synthetic/syn" in syn.array.path and syn.rows.size == 40


def test_loader_memory_is_bounded_by_cache_mb(tmp_path: Path) -> None:
    """About 19 MB of betas in 1.1 MB session chunks: with cache_mb=1 the loader holds the
    1 MiB buffer plus the transient buffers of one chunk read (zarr's decoded chunk, the float
    array, its row copies, a batch); with cache_mb=512 everything at once. Same batches."""
    import tracemalloc

    from nfstore.embeddings import embed_store
    from nfstore.synth import synthesize
    from nfstore.tiny import write_tiny_encoder

    synthesize("nsd", tmp_path / "raw", subjects=(1,), sessions=16, trials_per_session=60,
               images_per_subject=400, shared=10, image_size=16, grid=(26, 30, 26))
    nfstore.ingest("nsd", tmp_path / "raw", tmp_path / "s.zarr")
    embed_store(tmp_path / "s.zarr", "ip-adapter-sdxl",
                write_tiny_encoder(tmp_path / "enc")["hf"], workers=0, batch_size=256)
    store = nfstore.open_store(tmp_path / "s.zarr")
    n_vox = store.dataset("nsd/subj01").sizes["voxel"]

    def peak(cache_mb: int) -> tuple[int, list[list[int]]]:
        cfg = build({"subjects": ["nsd/subj01"], "cache_mb": cache_mb, "batch_size": 16})
        data = load_dataset(store, cfg)
        tracemalloc.start()
        order = [b.targets.tolist() for b in batches(data, cfg, epoch=0)]
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top, order

    (small, a), (large, b) = peak(1), peak(512)
    data_bytes = 960 * n_vox * 4
    chunk_bytes = 60 * n_vox * 4
    assert data_bytes > 16 * 2**20 and sorted(sum(a, [])) == sorted(sum(b, []))
    assert large > 0.8 * data_bytes  # unbounded by the cache: holds (nearly) everything
    assert small < 2**20 + 4 * chunk_bytes, (small, chunk_bytes)  # cache + one chunk's buffers
    assert small < 0.3 * data_bytes


def test_cosine_loss_against_a_direct_computation() -> None:
    import torch

    from nftrain.losses import cosine_loss

    rng = np.random.default_rng(0)
    p, t = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))
    want = np.mean([1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(p, t)])
    assert float(cosine_loss(torch.from_numpy(p), torch.from_numpy(t))) == pytest.approx(want)
    same = cosine_loss(torch.from_numpy(p), torch.from_numpy(2 * p))
    assert float(same) == pytest.approx(0, abs=1e-6)
