"""tools/benchmark.py: a tiny CPU run of the training benchmark (JSON schema) and of the
reference loops, the table-memory figures, and the method spec syntax."""

import json

import pytest
import torch

from helpers import run_tool
from pretrain.benchmark.table_footprint import table_memory
from pretrain.benchmark.training import parse_method
from tools.benchmark import main

# One timed iteration of one round of resnet18 on 32x32 CPU batches of 4.
TINY = [
    "--device",
    "cpu",
    "--arch",
    "resnet18",
    "--image-size",
    "32",
    "--batch-size",
    "4",
    "--iters",
    "1",
    "--warmup",
    "1",
    "--rounds",
    "1",
    "--num-classes",
    "10",
    "--num-samples",
    "64",
    "--threads",
    "1",
]


def test_tiny_training_benchmark_writes_the_json_schema(tmp_path):
    out = tmp_path / "bench.json"
    # TINY with two timed iterations and two rounds (the later flags win).
    main(
        TINY
        + ["--methods", "baseline,pskd:PSKD.TOPK=2", "--iters", "2", "--rounds", "2"]
        + ["--json", str(out)]
    )
    report = json.loads(out.read_text())
    assert report["mode"] == "training"
    assert {"cpu", "cpus_usable", "torch"} <= set(report["machine"])
    assert report["settings"]["arch"] == "resnet18" and report["settings"]["batch_size"] == 4
    methods = [r["method"] for r in report["results"]]
    assert methods == ["baseline", "pskd:PSKD.TOPK=2"]
    for r in report["results"]:
        assert r["img_per_s"] > 0 and r["peak_mem_mb"] >= r["state_mb"] > 0
        assert len(r["img_per_s_rounds"]) == 2
    base, pskd = report["results"]
    assert base["ratio_to_baseline"] == 1.0 and base["table_mb"] == 0
    # top-2 table of 64 samples (+1 spare row): bf16 values and int16 ids
    assert pskd["table_mb"] == pytest.approx(65 * 2 * 4 / 1e6)
    assert {r["mode"] for r in report["table_memory"]} >= {"sharded dense", "sharded top-10"}


def test_tiny_reference_loops_run_side_by_side(tmp_path):
    out = tmp_path / "bench.json"
    data = tmp_path / "jpeg"  # generated: 16 JPEGs of 40 px in 8 classes
    main(
        TINY
        + ["--reference-loops", "--data", str(data), "--gen-images", "16", "--gen-size", "40"]
        + ["--rounds", "2", "--json", str(out)]
    )
    assert (data / "train").is_dir()
    report = json.loads(out.read_text())
    assert report["mode"] == "reference_loops"
    results = {r["method"]: r for r in report["results"]}
    assert list(results) == ["engine", "torchvision", "engine:pskd", "authors:pskd"]
    for r in results.values():
        assert r["img_per_s"] > 0 and r["img_per_cpu_s"] > 0 and len(r["img_per_s_rounds"]) == 2
    assert results["engine"]["reference"] == "torchvision"
    assert results["engine:pskd"]["reference"] == "authors:pskd"
    for ours in ("engine", "engine:pskd"):
        for ratio in ("speed_ratio", "cpu_per_image_ratio"):
            assert results[ours][ratio] > 0 and len(results[ours][f"{ratio}_rounds"]) == 2


def test_authors_colour_jitter_and_lighting_keep_the_image_shape_and_range():
    """The authors' augmentation as the reference loop repeats it: the jitter blends towards
    references inside [0, 1] by at most 0.4, the lighting shifts each channel by one constant."""
    from pretrain.benchmark.reference_loops import authors_jitter, authors_lighting

    torch.manual_seed(0)
    img = torch.rand(3, 8, 8)
    jittered = authors_jitter(img)
    assert jittered.shape == img.shape and not torch.equal(jittered, img)
    assert jittered.min() >= -0.4 and jittered.max() <= 1.4
    shift = authors_lighting(img) - img
    assert torch.allclose(shift, shift[:, :1, :1].expand_as(shift))


def test_imagenet_table_memory_per_node_meets_the_targets():
    rows = {
        (r["mode"], r["dtype"]): r for r in table_memory(1_281_167, 1000, world=8, ranks_per_node=8)
    }
    assert rows[("authors: full fp32 table per process", "float32")][
        "per_node_gb"
    ] == pytest.approx(41.0, abs=0.05)
    assert rows[("sharded dense", "bfloat16")]["per_node_gb"] <= 2.6
    assert rows[("sharded top-10", "bfloat16")]["per_node_mb"] <= 60
    # a node of a 2-node job holds half of the table
    two = {
        (r["mode"], r["dtype"]): r
        for r in table_memory(1_281_167, 1000, world=16, ranks_per_node=8)
    }
    assert two[("sharded dense", "bfloat16")]["per_node_gb"] == pytest.approx(1.281, abs=0.01)


def test_method_spec_syntax():
    assert parse_method("pskd:PSKD.TOPK=10:PSKD.TABLE_DTYPE=float32") == (
        "pskd",
        ["METHOD.NAME", "pskd", "PSKD.TOPK", "10", "PSKD.TABLE_DTYPE", "float32"],
    )
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_method("pskd:PSKD.TOPK")


@pytest.mark.integration
def test_command_line_help():
    assert "--input-pipeline" in run_tool(["tools/benchmark.py", "--help"]).stdout


@pytest.mark.integration
def test_check_syncs_runs_every_method(tmp_path):
    from pretrain.methods import METHODS

    report = main(TINY + ["--check-syncs"])
    assert sorted(r["method"] for r in report["results"]) == sorted(METHODS)


def test_check_syncs_names_a_synchronising_step(monkeypatch):
    from pretrain.methods.cross_entropy import CrossEntropy

    step = CrossEntropy.training_step

    def syncing_step(self, model, images, labels, indices):
        losses, logits = step(self, model, images, labels, indices)
        losses["loss_ce"].item()
        return losses, logits

    monkeypatch.setattr(CrossEntropy, "training_step", syncing_step)
    with pytest.raises(RuntimeError, match=r"baseline synchronises.*item \(at test_benchmark.py"):
        main(TINY + ["--check-syncs", "--methods", "baseline"])


@pytest.mark.parametrize(
    "args, named",
    [
        (["--methods", "baseline,tfkd:TFKD.KL_REDUCTION=sum"], "TFKD.KL_REDUCTION is 'sum'"),
        (["--methods", "pskd:PSKD.SOURCE=tabel"], "PSKD.SOURCE is 'tabel'"),
        (["--arch", "resnet-18"], "MODEL.ARCH is 'resnet-18'"),
        (["--opts", "DATALOADER.DECODE", "gpu"], "DATALOADER.DECODE is 'gpu'"),
    ],
)
def test_a_bad_option_stops_before_the_first_measurement(monkeypatch, args, named):
    """The benchmark's configs are assembled and checked as every tool's (setup_cfg): a typo is
    one error line, not a failure after the methods before it were measured."""
    import pretrain.benchmark.training as bench

    def measured(*args, **kwargs):
        raise AssertionError("a step was measured")

    monkeypatch.setattr(bench.MethodRun, "run", measured)
    with pytest.raises(SystemExit) as info:
        main(TINY + args)
    assert str(info.value.code).startswith("error: config value not admitted: " + named)
