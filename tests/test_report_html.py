"""report.html: one self-contained page, and what headless Chromium makes of it (skipped only without Chromium)."""
from __future__ import annotations

import base64
import importlib.util
import json
import re

import numpy as np
import pytest

from conftest import REPO, nnunet_folders_in
from test_metrics_report import _fake_results, _fake_synthetic

pytestmark = pytest.mark.slow  # a whole report with FID/KID, and headless Chromium in a subprocess


def _render_module():
    spec = importlib.util.spec_from_file_location("render_report", REPO / "docs" / "render_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def html_report(tmp_path_factory, random_weights):
    """`nnaug report` (built once for this module) on a fake results tree whose synthetic set holds one
    copy of a real case."""
    from click.testing import CliRunner

    from nnaug.example import write_example_dataset
    from nnaug_cli.main import cli

    base = tmp_path_factory.mktemp("html_report")
    with pytest.MonkeyPatch.context() as mp:
        paths = nnunet_folders_in(base, mp)
        real = write_example_dataset(dataset_id=997, name="nnaugExample", num_cases=8, size=48, seed=0)
        _fake_synthetic(paths, real, ["example_005"])
        _fake_results(paths["results"], real.name)
        result = CliRunner().invoke(cli, ["report", "997", "--inception-weights", str(random_weights), "--folds", "0,1",
                                          "--frd-roi", "image", "--frd-image-types", "Original"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = paths["results"] / "nnaug" / real.name
    return folder, json.loads((folder / "report.json").read_text()), result


def test_report_html_is_self_contained_and_complete(html_report):
    folder, report, result = html_report
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert str(folder / "report.html") in result.stdout
    # nothing is fetched: every src/href is an embedded data: URL
    links = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert links and all(link.startswith("data:image/png;base64,") for link in links), links[:3]
    assert "<script" not in page and "@import" not in page
    # the bar chart, the real and the synthetic contact sheet, the closest pairs, the similarity histogram,
    # mask realism and coverage
    assert len(links) == 7
    for link in links:
        assert base64.b64decode(link.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    (row,) = report["synthetic"]
    assert np.isfinite(row["frd"]) and np.isfinite(row["fid"])
    for text in (f"{row['frd']:.2f}", f"{row['fid']:.2f}", f"{row['kid_mean']:.4f}", "0.7000", "0.6200", "0.6100",
                 "Dataset998_nnaugExampleSynth", "nnUNetTrainer_nnaugPretrainFinetune_5epochs", "possible copies",
                 "2 runs per arm, no interval", "log(d²)"):
        assert text in page, text
    # the copied case is the closest pair, flagged in the memorisation table and in the warnings
    assert row["memorisation"]["rows"][0]["case"] == "example_000" and row["memorisation"]["n_flagged"] >= 1
    assert re.search(r'<tr class="bad"><td>example_000</td><td>example_005</td>', page)
    assert any("possible copies" in w for w in report["warnings"])
    # synthetic datasets, mean Dice, Dice per fold, closest pairs, mask realism, coverage
    assert page.count("<table") == 6
    assert 'alt="mask realism"' in page and 'alt="coverage"' in page and "Diversity and coverage" in page
    spaces = {c["space"]: c for c in row["coverage"]}
    assert set(spaces) == {"radiomics", "inception"}  # FRD's features, and Inception's with the (random) weights
    for c in spaces.values():
        assert f"coverage in {c['space']} space" in page and f"{c['synthetic']['coverage']:.2f}" in page


def test_report_html_renders_in_headless_chromium(html_report, tmp_path):
    from PIL import Image

    render = _render_module()
    if render.find_chromium() is None:
        pytest.skip("no Chromium on this machine (apt-get install -y chromium)")
    folder, _, _ = html_report
    shot = render.render(folder / "report.html", tmp_path / "shot.png", width=1200, height=2400)
    image = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert image.shape == (2400, 1200, 3)
    # text was drawn (dark pixels in the title band), and the embedded pictures were decoded and shown:
    # the page itself is grey/white, only the images (and the orange/blue chart bars) are saturated
    assert (image[:80].min(axis=2) < 60).mean() > 0.005
    saturation = image.max(axis=2) - image.min(axis=2)
    assert (saturation > 60).mean() > 0.03, (saturation > 60).mean()
    assert image.std() > 20
