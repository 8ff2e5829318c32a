"""report.html: numbers, per-frame shares, clip sprites, the page from a synthetic run folder, and the page in a
real browser (headless Chromium driven by Playwright; skipped where either is missing)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from motion_relevance import report
from motion_relevance.metrics import keys
from motion_relevance.metrics.temporal import frame_shares
from motion_relevance.pipeline.report_page import (
    ASSETS_DIR,
    COLUMN_HELP,
    column_help,
    format_number,
    main,
    write_clip_frames,
    write_report_page,
)
from motion_relevance.viz.colormaps import grey_frames

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ numbers
@pytest.mark.parametrize(("value", "text"), [
    (0.454253, "0.454"), (0.02199, "0.0220"), (7.85, "7.85"), (360.33, "360"), (1234.5, "1230"),
    (99.96, "100"), (0.99996, "1.00"), (-0.0012345, "-0.00123"), (0.000123456, "0.000123"), (1e-5, "1.00e-05"),
    (3.0, "3"), ("3.0", "3"), (None, "–"), ("", "–"), ("nan", "nan"), (float("inf"), "inf"), ("dtd", "dtd"),
])
def test_three_significant_figures(value, text) -> None:
    assert format_number(value) == text


def test_every_column_of_the_tables_is_explained(tmp_path: Path) -> None:
    metrics = {}
    for metric in [m for names in report.TABLES.values() for m in names]:
        for method in ("dtd", "dtd_selective", "dtd~gradcam"):
            metrics[keys.metric_key("test", metric, method)] = 0.5
            metrics[keys.metric_key("test", metric, method, "std")] = 0.1
    for ref in report.REFERENCES:
        for metric, method in ((f"deletion_auc_{ref}", "dtd"), (f"insertion_auc_{ref}", "dtd"),
                               (f"deletion_auc_{ref}", "random"), (f"insertion_auc_{ref}", "random"),
                               (f"freeze_drop_{ref}", "dtd_selective"), (f"topm_drop_{ref}", "dtd"),
                               (f"random_drop_{ref}", "dtd"), (f"drop_advantage_random_{ref}", "dtd"),
                               ("drop_budget", "dtd")):
            metrics[keys.metric_key("test", metric, method)] = 0.3
    for method in ("dtd", "dtd_selective"):
        metrics[keys.metric_key("test", "randomization_s0", method)] = 0.9
    metrics["test/randomization_stages"] = ["fc8"]
    report.write_tables(metrics, tmp_path, stage="test")
    columns = set(report.SIGMA_COLUMNS) | {"sigma", "method", "job", "objective", "complete_sweep"}
    for path in tmp_path.glob("*.csv"):
        columns |= set(path.read_text().splitlines()[0].split(","))
    assert {"drop_selective", "spearman_selective", "budget_voxels", "gt_f1_n_undefined"} <= columns
    missing = sorted(c for c in columns if not column_help(c))
    assert not missing, f"columns without a definition in COLUMN_HELP: {missing}"
    assert column_help("precision_n_undefined").startswith("clips where precision")
    assert column_help("no_such_column") == ""
    assert all(text and "\n" not in text for text in COLUMN_HELP.values())


# ------------------------------------------------------------------ per-frame shares
# ------------------------------------------------------------------ clip sprites
def _clips(n: int = 2, t: int = 6, h: int = 12, w: int = 16) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Clips with a bright square moving right; a signed map that follows it, its selective map, a static
    non-negative map."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 80, size=(n, t, h, w, 3), dtype=np.uint8)
    moving = np.zeros((n, t, h, w), np.float32)
    for i in range(t):
        frames[:, i, 3:7, 2 * i:2 * i + 4] = (230, 40, 40)
        moving[:, i, 3:7, 2 * i:2 * i + 4] = 1.0 + i
    moving[:, :, 9:, :3] = -6.0
    selective = moving * (np.arange(t) % 2 == 0)[None, :, None, None]
    static = np.zeros((n, 1, t, h, w), np.float32)
    static[:, :, :, 8:, 10:] = 2.0
    return frames, {"dtd": moving, "dtd_selective": selective, "gradcam": static}


def test_clip_frames_write_sprites_and_index(tmp_path: Path) -> None:
    frames, maps = _clips()
    maps["zero"] = np.zeros_like(maps["dtd"])
    index_path = write_clip_frames(tmp_path, frames, maps, captions=["a", "b"], prefix="test")
    index = json.loads(index_path.read_text())
    n, t, h, w = frames.shape[:4]
    assert (index["frames"], index["height"], index["width"]) == (t, h, w)
    assert [(v["name"], v["method"], v["kind"], v["mode"]) for v in index["views"]] == [
        ("dtd", "dtd", "baseline", "signed"), ("dtd_selective", "dtd", "selective", "signed"),
        ("gradcam", "gradcam", "baseline", "positive"), ("zero", "zero", "baseline", "positive")]
    assert [c["caption"] for c in index["clips"]] == ["a", "b"]
    for i, clip in enumerate(index["clips"]):
        assert set(clip["views"]) == {"input", "dtd", "dtd_selective", "gradcam", "zero"}
        sprite = np.asarray(Image.open(tmp_path / clip["views"]["input"]["sprite"]).convert("RGB"))
        assert sprite.shape == (h, t * w, 3)
        for k in range(t):  # frame k is the k-th block, lossless (PNG for small frames)
            np.testing.assert_array_equal(sprite[:, k * w:(k + 1) * w], frames[i, k])
        zero = np.asarray(Image.open(tmp_path / clip["views"]["zero"]["sprite"]).convert("RGB"))
        expected = grey_frames(frames[i], fade=0.15)  # zero relevance: the greyed frame, no colour
        np.testing.assert_array_equal(zero, np.concatenate(list(expected), axis=1))
        share = clip["views"]["dtd"]["share"]
        dtd = torch.as_tensor(np.asarray(maps["dtd"], dtype=np.float32))
        expected_share = frame_shares(dtd if dtd.dim() == 5 else dtd.unsqueeze(1))[i]
        np.testing.assert_allclose(share, expected_share.double().numpy(), atol=1e-6)
        assert clip["views"]["zero"]["share"] == [None] * t
        overlay = np.asarray(Image.open(tmp_path / clip["views"]["dtd"]["sprite"]).convert("RGB")).astype(int)
        first, last = overlay[:, :w], overlay[:, (t - 1) * w:]
        red_last = (last[..., 0] - last[..., 2])[3:7, 10:14].mean()  # the clip's largest relevance: red
        red_first = (first[..., 0] - first[..., 2])[3:7, 10:14].mean()  # no relevance there yet: grey
        assert red_last > 100 and abs(red_first) < 5, (red_last, red_first)
        assert (last[..., 2] - last[..., 0])[9:, :3].mean() > 20  # negative relevance is drawn blue
    curves = {"dtd": np.full((n, t), 1.0 / t)}
    index = json.loads(write_clip_frames(tmp_path, frames, maps, curves=curves, image_format="jpg").read_text())
    assert index["clips"][0]["views"]["dtd"]["share"] == [round(1.0 / t, 6)] * t
    assert index["clips"][0]["views"]["dtd"]["sprite"].endswith(".jpg")


@pytest.mark.parametrize(("change", "match"), [
    ({"frames": np.zeros((1, 6, 12, 16, 3), np.float32)}, "uint8"),
    ({"frames": np.zeros((6, 12, 16, 3), np.uint8)}, "N, T, H, W, 3"),
    ({"maps": {"dtd": np.zeros((2, 5, 12, 16))}}, "N=2, T=6"),
    ({"maps": {"dtd": np.full((2, 6, 12, 16), np.nan)}}, "NaN"),
    ({"maps": {"input": np.zeros((2, 6, 12, 16))}}, "rename the map"),
    ({"maps": {"a b": np.zeros((2, 6, 12, 16)), "a_b": np.zeros((2, 6, 12, 16))}}, "a_b"),
    ({"captions": ["only one"]}, "one per clip"),
    ({"prefix": "../x"}, "prefix"),
    ({"mode": "rainbow"}, "mode"),
    ({"image_format": "gif"}, "image_format"),
    ({"quality": 0}, "quality"),
    ({"alpha": 2.0}, "alpha"),
    ({"curves": {"dtd": np.zeros((2, 5))}}, "curves"),
])
def test_clip_frames_refuse_bad_input(tmp_path: Path, change: dict, match: str) -> None:
    frames, maps = _clips()
    kwargs = {"frames": frames, "maps": maps, **change}
    with pytest.raises(ValueError, match=re.escape(match)):
        write_clip_frames(tmp_path, **kwargs)


def test_long_clips_are_downscaled_to_fit_one_sprite(tmp_path: Path, monkeypatch) -> None:
    import motion_relevance.pipeline.report_page as rp

    monkeypatch.setattr(rp, "MAX_SPRITE_WIDTH", 40)
    frames, maps = _clips(n=1, t=6, h=12, w=16)  # 96 px wide: downscaled by 3
    index = json.loads(write_clip_frames(tmp_path, frames, maps).read_text())
    assert (index["height"], index["width"]) == (4, 5)
    sprite = Image.open(tmp_path / index["clips"][0]["views"]["input"]["sprite"])
    assert sprite.size == (6 * 5, 4)


# ------------------------------------------------------------------ the page
def _png(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def make_run(run: Path) -> Path:
    """A synthetic run folder as mr-explain writes it: metrics, tables, figures, per_clip.csv, config, clips."""
    (run / "tables").mkdir(parents=True)
    metrics = {"test/precision/dtd": 0.454253, "test/precision_std/dtd": 0.10382, "test/precision/dtd_selective":
               0.87108, "test/precision_std/dtd_selective": 0.2233, "test/precision_n/dtd": 3,
               "test/precision_n/dtd_selective": 3, "test/precision_n_undefined/dtd": 0,
               "test/precision_n_undefined/dtd_selective": 0, "test/faithfulness_curves": {"dtd/freeze": [1, 0.5]},
               "checkpoint": "checkpoints/last.ckpt"}
    (run / "metrics.json").write_text(json.dumps(metrics))
    report.write_tables(metrics, run / "tables", stage="test")
    (run / "tables" / "table6_faithfulness.csv").write_text(
        "method,reference,deletion_auc,deletion_auc_std,insertion_auc\n"
        "gradcam,freeze,0.8496,0.0654,0.8487\ndtd,freeze,0.8048,0.0515,0.8816\ngbp,freeze,0.846,,0.8758\n")
    _png(run / "explanations" / "test_epoch000_grid.png", (60, 40), (200, 30, 30))
    _png(run / "explanations" / "test_faithfulness_freeze.png", (50, 30), (30, 200, 30))
    _png(run / "explanations" / "test_randomization.png", (50, 30), (30, 30, 200))
    (run / "per_clip.csv").write_text("stage,clip,video,label,target,metric,method,value\n"
                                      "test,0,a.avi,0,1,precision,dtd,0.5\ntest,1,b.avi,1,1,precision,dtd,\n")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("selective:\n  sigma: 4.0\n  padding: replicate\nseed: 12345\n")
    (run / ".hydra" / "overrides.yaml").write_text("- num_clips=3\n- selective.sigma=4\n")
    frames, maps = _clips()
    write_clip_frames(run / ASSETS_DIR, frames, maps, captions=["right -> pred right", "left -> pred right"])
    return run


def test_page_holds_settings_tables_figures_and_clips(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    page = write_report_page(run)
    assert page == run.resolve() / "report.html"
    text = page.read_text()
    assert "selective.sigma=4" in text and "selective.padding" in text  # overrides and the resolved config
    assert "0.454 ± 0.104" in text and "0.871 ± 0.223" in text  # mean ± std, three significant figures
    assert f'title="{COLUMN_HELP["precision"]}"' in text.replace("&#39;", "'")
    assert "Table 6 · faithfulness" in text and "0.850 ± 0.0654" in text
    assert text.count("data:image/png;base64,") >= 3 + 2 * 4  # 3 figures, 2 clips x (input + 3 maps)
    assert "Explanation grid" in text and "Randomisation" in text and "Faithfulness" in text
    assert "Per-clip values (per_clip.csv)" in text and "All metrics (metrics.json, " in text
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")  # nothing from the network
    assert "https://" not in text
    clips = json.loads(re.search(r'id="clip-data">(.*?)</script>', text, re.S).group(1))
    assert [c["caption"] for c in clips[0]["clips"]] == ["right -> pred right", "left -> pred right"]


def test_page_links_images_beyond_the_inline_budget(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    text = write_report_page(run, inline_mb=0).read_text()
    assert "data:image" not in text
    for src in re.findall(r'src="([^"]+)"', text) + re.findall(r'"src": "([^"]+)"', text):
        assert (run / src).is_file(), src
    assert "linked, not embedded" in text


def test_page_of_an_empty_or_broken_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    text = write_report_page(empty).read_text()
    assert "No configuration was saved" in text and "<table" not in text
    broken = tmp_path / "broken"
    (broken / ASSETS_DIR).mkdir(parents=True)
    (broken / "metrics.json").write_text('{"test/precision/dtd": 0.5')
    (broken / ASSETS_DIR / "test_clips.json").write_text('{"frames": 4}')
    text = write_report_page(broken).read_text()
    assert "metrics.json: not valid JSON" in text
    assert "test_clips.json: not a clip index" in text


def test_page_refusals(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        write_report_page(tmp_path / "nope")
    with pytest.raises(ValueError, match="not directly inside run_dir"):
        write_report_page(tmp_path, out=tmp_path / "sub" / "report.html")
    with pytest.raises(ValueError, match="inline_mb"):
        write_report_page(tmp_path, inline_mb=-1)


def test_command_line(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    assert main([str(run)]) == 0
    assert (run / "report.html").is_file() and "report.html" in capsys.readouterr().out
    assert main([str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


# ------------------------------------------------------------------ in a browser
def _chromium() -> str | None:
    for name in (os.environ.get("MR_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


def test_page_in_a_browser(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install "
                                   "playwright; the dev extra has it)")
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set MR_CHROMIUM to its path)")
    run = make_run(tmp_path / "run")
    page_path = write_report_page(run)
    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: problems.append(f"network request: {r.url}")
                    if not r.url.startswith(("file:", "data:")) else None)
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            # tables and images are there
            assert page.locator("#t-table1_precision tbody tr").count() == 2
            assert page.locator("#t-table6_faithfulness th").first.get_attribute("title") == COLUMN_HELP["method"]
            images = page.locator("figure img")
            assert images.count() == 3
            assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
            # sorting: click deletion_auc twice -> descending
            column = page.locator("#t-table6_faithfulness th", has_text="deletion_auc").first
            column.click()
            first = page.locator("#t-table6_faithfulness tbody tr td:first-child")
            assert first.all_text_contents() == ["dtd", "gbp", "gradcam"]
            column.click()
            assert first.all_text_contents() == ["gradcam", "gbp", "dtd"]
            # the clip viewer: input, baseline and selective panels of dtd; the slider changes the frame shown
            sprites = page.locator("#panels .sprite")
            assert [sprites.nth(i).get_attribute("data-view") for i in range(sprites.count())] == [
                "input", "dtd", "dtd_selective"]
            assert page.locator("#curve path").count() == 2
            assert page.evaluate("""() => {
                const s = document.querySelector('#panels .sprite');
                const probe = new Image(); probe.src = getComputedStyle(s).backgroundImage.slice(5, -2);
                return probe.complete || probe.decode().then(() => true);
            }""")
            before = sprites.nth(1).screenshot()
            position = sprites.nth(1).evaluate("e => getComputedStyle(e).backgroundPosition")
            page.locator("#frame-slider").fill("4")
            assert sprites.nth(1).get_attribute("data-frame") == "4"
            assert sprites.nth(1).evaluate("e => getComputedStyle(e).backgroundPosition") != position
            assert page.locator("#frame-label").text_content() == "t = 4 / 5"
            assert sprites.nth(1).screenshot() != before  # the pixels shown changed
            marker = page.locator("#curve line.marker")
            assert float(marker.get_attribute("x1")) > 46
            page.locator("#method-select").select_option("gradcam")
            assert sprites.count() == 2 and sprites.nth(1).get_attribute("data-frame") == "4"
            page.locator("#clip-select").select_option(index=1)
            assert sprites.nth(0).get_attribute("data-frame") == "4"
            out = os.environ.get("MR_REPORT_SCREENSHOT")
            page.screenshot(path=out or str(tmp_path / "report_page.png"), full_page=True)
        finally:
            browser.close()
    assert not problems, problems
