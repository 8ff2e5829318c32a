"""The explain entry point and the evaluation callbacks, end to end on a tiny trained checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from motion_relevance.explain_app import explain
from motion_relevance.models.checkpoint import load_classifier
from motion_relevance.report import main as report_main
from motion_relevance.train import train
from tests.conftest import TINY_DATA, compose_config

METHODS = ("dtd", "gradcam", "gbp", "guided_gradcam")


def _explain_cfg(tmp_path: Path, data_root: Path, ckpt: Path, *overrides: str):
    return compose_config(
        "explain",
        [f"paths.data_dir={data_root}", f"paths.cache_dir={data_root}/cache", f"ckpt_path={ckpt}", "logger=csv",
         "~callbacks.progress_bar", "num_clips=3", *TINY_DATA, *overrides],
        tmp_path,
    )


def test_explain_writes_tables_grid_and_metrics(tmp_path: Path, data_root: Path, checkpoint: Path) -> None:
    cfg = _explain_cfg(tmp_path, data_root, checkpoint)
    metrics, _ = explain(cfg)
    run = Path(cfg.paths.output_dir)
    for method in METHODS:
        for key in (f"test/precision/{method}", f"test/precision/{method}_selective",
                    f"test/selectivity_area/{method}", f"test/selectivity_mass/{method}",
                    f"test/overhead_ms/{method}", f"test/gt_precision/{method}", f"test/motion_share/{method}"):
            assert key in metrics, key
        area = metrics[f"test/selectivity_area/{method}"]
        undefined = int(metrics[f"test/selectivity_area_n_undefined/{method}"])
        defined = int(metrics[f"test/selectivity_area_n/{method}"])
        assert defined + undefined == 3
        if defined:  # the mean of the defined clips is an area ratio; NaN only when no clip is defined
            assert 0.0 <= float(area) <= 1.0, (method, area)
        else:
            assert float(area) != float(area), (method, area)
    assert "test/agreement/dtd~gradcam" in metrics
    assert "test/overhead_ms/selective" in metrics
    assert float(metrics["test/explained_clips"]) == 3
    for name in ("table1_precision", "table2_agreement", "table3_selectivity", "table4_overhead"):
        assert (run / "tables" / f"{name}.md").exists(), name
        assert (run / "tables" / f"{name}.csv").exists(), name
    grids = list((run / "explanations").glob("test_*_grid.png"))
    assert len(grids) == 1
    assert list((run / "explanations").glob("test_*_clip0.mp4"))


def test_report_rebuilds_tables_from_run_folder(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    metrics = {"test/precision/dtd": 0.5, "test/precision_std/dtd": 0.1, "test/precision/dtd_selective": 0.7,
               "test/overhead_ms/dtd": 12.0, "test/overhead_ms/selective": 0.3}
    (run / "metrics.json").write_text(json.dumps(metrics))
    report_main([str(run)])
    table = (run / "tables" / "table1_precision.md").read_text()
    assert "0.5 ± 0.1" in table and "dtd_selective" in table
    assert "selective" in (run / "tables" / "table4_overhead.csv").read_text()


def test_checkpoint_carries_what_explain_needs(checkpoint: Path) -> None:
    loaded = load_classifier(checkpoint)
    assert loaded.class_names == ["MoveRight", "MoveLeft"]
    assert loaded.preprocessing["crop_size"] == [32, 32]
    out = loaded.net(torch.zeros(1, 3, 16, 32, 32))
    assert out.shape == (1, 2)


def test_missing_checkpoint_is_named(tmp_path: Path, data_root: Path) -> None:
    cfg = _explain_cfg(tmp_path, data_root, tmp_path / "nope.ckpt")
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        explain(cfg)


def test_unreadable_checkpoint_is_named(tmp_path: Path, data_root: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.ckpt"):
        explain(_explain_cfg(tmp_path, data_root, bad))


def test_checkpoint_without_description_lists_keys(tmp_path: Path, data_root: Path) -> None:
    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": {}}, bare)
    with pytest.raises(ValueError, match="model, preprocessing, class_names"):
        explain(_explain_cfg(tmp_path, data_root, bare))


def test_class_count_mismatch_names_both(tmp_path: Path, data_root: Path, checkpoint: Path) -> None:
    cfg = _explain_cfg(tmp_path, data_root, checkpoint, "data.generator.classes=[right,left,up]",
                       f"data.root={data_root}/motion_shapes_3cls")
    with pytest.raises(ValueError, match="2 classes but .* has 3"):
        explain(cfg)


def test_class_name_mismatch_is_refused(tmp_path: Path, data_root: Path, checkpoint: Path) -> None:
    cfg = _explain_cfg(tmp_path, data_root, checkpoint, "data.generator.classes=[up,down]",
                       f"data.root={data_root}/motion_shapes_updown")
    with pytest.raises(ValueError, match="differ"):
        explain(cfg)


def test_callbacks_run_during_training(train_cfg) -> None:
    cfg = train_cfg("callbacks=explain", "trainer.fast_dev_run=true", "num_clips=2",
                    "callbacks.explanations.stages=[validate,test]")
    metrics, _ = train(cfg)
    for stage in ("val", "test"):  # both listed stages explain (fast_dev_run runs one batch of each)
        assert f"{stage}/precision/dtd" in metrics, stage
        assert f"{stage}/selectivity_area/gradcam" in metrics, stage
        assert float(metrics[f"{stage}/explained_clips"]) == 2, stage


def test_pathways_come_from_a_multi_pathway_checkpoint_unless_set() -> None:
    """mr-explain on a SlowFast checkpoint needs no data.pathways override; a value that is set is kept (and then
    checked against the checkpoint like every preprocessing field)."""
    from omegaconf import OmegaConf

    from motion_relevance.explain_app import adopt_pathways

    cfg = OmegaConf.create({"data": {"pathways": None}})
    adopt_pathways(cfg, {"pathways": {"alpha": 4}})
    assert OmegaConf.to_container(cfg.data.pathways) == {"alpha": 4}
    cfg = OmegaConf.create({"data": {"pathways": {"alpha": 2}}})
    adopt_pathways(cfg, {"pathways": {"alpha": 4}})
    assert cfg.data.pathways.alpha == 2
    cfg = OmegaConf.create({"data": {"pathways": None}})
    adopt_pathways(cfg, {"mean": [0.5]})
    assert cfg.data.pathways is None


def test_markdown_and_csv_tables_keep_columns_only_some_rows_have(tmp_path) -> None:
    """SlowFast's pathway-share columns exist on its rows only: neither the markdown nor the CSV may drop them."""
    import csv

    from motion_relevance.report import to_markdown, write_csv

    rows = [{"model": "c3d", "acc": 0.5}, {"model": "slowfast", "acc": 0.75, "fast_share": 0.6}]
    text = to_markdown(rows)
    assert "| model | acc | fast_share |" in text and "| c3d | 0.5 | – |" in text
    assert "| slowfast | 0.75 | 0.6 |" in text
    write_csv(rows, tmp_path / "t.csv")
    with open(tmp_path / "t.csv", newline="") as handle:
        assert [r["fast_share"] for r in csv.DictReader(handle)] == ["", "0.6"]


def test_explainer_names_reserved_in_metric_keys_are_refused() -> None:
    """``random`` (the faithfulness floor), ``model`` (motion reliance) and ``selective`` (the selective step's
    overhead) name values of no explainer in metric keys: an explainer of that name would mix its numbers with
    theirs, so it is refused before work; a plain name passes."""
    from omegaconf import OmegaConf

    from motion_relevance.utils.validation import check_explainers

    for name in ("random", "model", "selective", "dtd_selective", "a~b"):
        cfg = OmegaConf.create({"explainers": {name: {"_target_": "motion_relevance.explain.GuidedBackprop"}}})
        with pytest.raises(ValueError, match=rf"explainers.{name}: the name is reserved"):
            check_explainers(cfg)
    check_explainers(OmegaConf.create({"explainers": {"gbp2": {"_target_": "motion_relevance.explain.GradCAM"}}}))
