"""The image path, FLOP counting, the timing callback and result files, in process."""

import multiprocessing
import statistics

import pytest
import pytorch_lightning as pl
import torch
from conftest import model_config

from vlm_eff.atomic import write_atomic
from vlm_eff.data import SyntheticDataModule
from vlm_eff.flops import flops_per_image
from vlm_eff.models import ImageEncoder, random_model
from vlm_eff.modules import ImageEncoderModule
from vlm_eff.profiling import ProfilingCallback, reduction_share
from vlm_eff.reduction.dropping import apply_patch, remove_patch
from vlm_eff.reduction.merging import apply_tome, remove_tome
from vlm_eff.results import COLUMNS, append_locked, read_results


def test_image_encoder_is_exactly_the_stock_hugging_face_output(tiny_clip):
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        stock = tiny_clip.get_image_features(pixel_values=pixels).pooler_output
        assert torch.equal(ImageEncoder(tiny_clip)(pixels), stock)


def test_sdpa_and_eager_flop_counts_agree():
    pixels = torch.randn(1, 3, 32, 32)
    counts = {}
    for attn in ("sdpa", "eager"):
        torch.manual_seed(0)
        counts[attn] = flops_per_image(ImageEncoder(random_model(model_config("clip_tiny", attn))), pixels)
    assert counts["sdpa"] == counts["eager"] > 0


def test_vit_b16_flops_match_the_analytic_count():
    """Matmuls + patch conv + attention (QK^T and AV): 35.1 GFLOPs = 17.6 GMACs at 224 px, SDPA on CPU included."""
    clip = random_model(model_config("clip_vit_b16"))
    N, D, L, M, P = 197, 768, 12, 3072, 512
    per_layer = 2 * N * D * D * 4 + 2 * N * D * M * 2 + 2 * 2 * N * N * D
    analytic = L * per_layer + 2 * (N - 1) * D * 3 * 16 * 16 + 2 * D * P
    counted = flops_per_image(ImageEncoder(clip).eval(), torch.randn(1, 3, 224, 224))
    assert counted == analytic
    assert round(counted / 1e9, 1) == 35.1


def test_interpolated_image_size_counts_more_tokens():
    clip = random_model(model_config("clip_tiny")).eval()
    encoder = ImageEncoder(clip, image_size=64)
    assert encoder.n_patches == 256
    assert encoder(torch.randn(2, 3, 64, 64)).shape == (2, 32)


STRATEGIES = {
    "cls_preserving": lambda clip: apply_patch(clip, keep=0.5, layer=0),
    "evit": lambda clip: apply_patch(clip, keep=0.7, layer=[1, 2, 3], score="cls_attn", summary="fused"),
    "adaptive": lambda clip: apply_patch(clip, keep=1.0, layer=0, mass=0.7),
    "tome": lambda clip: apply_tome(clip, 8),
}


def test_reduction_share_is_zero_for_the_stock_model_and_positive_under_every_strategy(tiny_clip):
    """Every strategy's reduction work (scores, selection, merging, padding masks) runs inside the
    `vlm_eff.reduce` profiler range; the stock model has none."""
    batches = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    encoder = ImageEncoder(tiny_clip)
    assert reduction_share(encoder, batches) == 0
    for name, patch in STRATEGIES.items():
        patch(tiny_clip)
        try:
            share = reduction_share(encoder, batches)
        finally:
            remove_patch(tiny_clip)
            remove_tome(tiny_clip)
        assert 0 < share < 100, name


@pytest.mark.parametrize("name", ["cls_preserving", "tome"])
def test_compiled_encoder_gives_the_eager_output(tiny_clip, name):
    """The torch.compile path (profile.py compile=true) computes what the eager patched model does."""
    pixels = torch.randn(4, 3, 32, 32)
    STRATEGIES[name](tiny_clip)
    try:
        module = ImageEncoderModule(ImageEncoder(tiny_clip), compile=True)
        with torch.no_grad():
            eager = module.encoder(pixels)
            compiled = module.run_encoder(pixels)
    finally:
        remove_patch(tiny_clip)
        remove_tome(tiny_clip)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def test_callback_times_only_the_batches_after_warm_up(tiny_clip):
    data = SyntheticDataModule(batch_size=4, image_size=32, n_batches=7)
    profiler = ProfilingCallback(warmup=2)
    trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[profiler], enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.test(ImageEncoderModule(ImageEncoder(tiny_clip)), datamodule=data, verbose=False)
    latencies = profiler.latencies_s["test"]
    assert len(latencies) == 5 and all(t > 0 for t in latencies)
    summary = profiler.summaries["test"]
    assert summary["throughput_img_s"] == pytest.approx(4 * 5 / sum(latencies))
    assert summary["latency_ms_mean"] == pytest.approx(1000 * statistics.fmean(latencies))
    assert summary["latency_ms_median"] <= summary["latency_ms_p90"] <= 1000 * max(latencies) + 1e-9
    assert summary["mem_kind"] == "rss_delta" and summary["peak_mem_mib"] >= 0


class _WideLinear(pl.LightningModule):
    """One 4096x4096 layer: 64 MiB of weights, so 64 MiB of gradients and 128 MiB of Adam state."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4096, 4096, bias=False)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).square().mean()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_training_peak_memory_counts_gradients_and_optimizer_state():
    """The train stage's peak is measured from the start of training: gradients and Adam's two
    moment buffers (3 x 64 MiB here), allocated at the first step, count even though that step is a
    warm-up step and is not timed."""
    batches = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(6 * 4, 4096)), batch_size=4)
    profiler = ProfilingCallback(warmup=3)
    trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[profiler], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, max_epochs=1)
    trainer.fit(_WideLinear(), batches)
    summary = profiler.summaries["train"]
    assert len(profiler.latencies_s["train"]) == 3 and summary["mem_kind"] == "rss_delta"
    assert summary["peak_mem_mib"] >= 0.9 * 3 * 64, summary["peak_mem_mib"]


def _append_rows(path, worker, n):
    for i in range(n):
        append_locked(path, {c: "" for c in COLUMNS} | {"task": f"w{worker}", "n_images": i, "versions": "x" * 500})


def test_parallel_appends_never_lose_or_tear_a_row(tmp_path):
    path = tmp_path / "results.csv"
    workers = [multiprocessing.Process(target=_append_rows, args=(path, w, 40)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    rows = read_results(path)
    assert len(rows) == 160 and all(r["versions"] == "x" * 500 for r in rows)
    assert sorted((r["task"], int(r["n_images"])) for r in rows) == [(f"w{w}", i) for w in range(4) for i in range(40)]


def test_a_table_from_an_older_version_is_moved_aside(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("task,time\nprofile,yesterday\n")
    append_locked(path, {c: "" for c in COLUMNS} | {"task": "now"})
    assert [r["task"] for r in read_results(path)] == ["now"]
    (old,) = tmp_path.glob("results.old-*.csv")
    assert old.read_text() == "task,time\nprofile,yesterday\n"


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("old\n")

    with pytest.raises(TypeError):
        write_atomic(path, object())  # fails mid-write: not a str
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["results.csv"]
