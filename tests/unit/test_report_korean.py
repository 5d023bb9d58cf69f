"""The monthly report: Korean text renders, charts and page carry the ledger's figures."""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from accounting.export import BILLING_DIR, COMPLIANCE_DIR, read_ledger
from accounting.figures import SIMULATED_MARKER
from accounting.registry import load_registry
from accounting.report import ReportError, entity_figures, render_report, top_projects
from accounting.schemas import BILLING, COMPLIANCE
from storage.dataset import Store
from tests.unit.audit_month_fixture import PERIOD, build_month

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    return struct.unpack(">II", data[16:24])


def test_report_renders_korean_charts_and_a_self_contained_page(tmp_path: Path) -> None:
    # given the hand-worked closed month (gov 9,001 KRW, samsung 925 KRW)
    store = build_month(tmp_path / "data")
    # when the report is drawn (any missing-glyph warning would fail: warnings are errors here)
    result = render_report(store, PERIOD, tmp_path / "reports")
    out = tmp_path / "reports" / PERIOD
    # then four PNG charts of a readable size and one HTML page exist
    assert sorted(result.files) == sorted(
        ["usage-by-entity.png", "utilisation-coverage.png", "coverage-by-model.png", "top-projects.png", "report.html"]
    )
    for name in result.files[:4]:
        width, height = _png_size((out / name).read_bytes())
        assert width > 500 and height > 200
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<title>GPU 사용 보고서 — 2026-11</title>" in page
    # the page embeds every chart (no external file, no network)
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == 4
    assert all(base64.b64decode(e)[:8] == PNG_MAGIC for e in embedded)
    assert not re.search(r'(src|href)="https?:|url\(https?:', page)
    # Hangul shows and prints without a Korean font installed: NanumGothic subset embedded
    fonts = re.findall(r"url\(data:font/woff;base64,([^)]+)\)", page)
    assert len(fonts) == 2 and all(base64.b64decode(f)[:4] == b"wOFF" for f in fonts)
    assert sum(len(f) for f in fonts) < 400_000
    # and carries the ledger's figures: gov 9,001 KRW, the national 9,926 KRW, gov's breaches
    assert "<td>gov</td>" in page and "9,001" in page and "9,926" in page
    assert "snu-llm" in page
    # breaches are sentences with their figures, never bare codes
    assert "gov · NVIDIA B200: 활용률 55.6%로 기준" in page
    assert "gov, NVIDIA B200: coverage 0.2% is below" in page
    assert "low_coverage" not in page and "under_use" not in page
    # the definitions of 활용률 and 보고율 are on the page
    assert "가동 ÷ 보고 (busy ÷ reported)" in page and "보고 ÷ 할당 용량 (reported ÷ capacity)" in page
    # the seal: the manifest's SHA-256 (what sha256sum prints) and a verify that passed
    digest = hashlib.sha256((tmp_path / "data/manifests/2026-11.json").read_bytes()).hexdigest()
    assert digest in page and result.seal.manifest_sha256 == digest and result.seal.verified
    assert "Verified: 3 sealed files re-hashed" in page
    # node-1 reported 2 of the month's 720 hours: it is listed with its longest silence (KST)
    assert [(g.node, g.missing_hours, g.longest_hours) for g in result.node_gaps] == [("node-1", 718, 718)]
    assert "11-01 02:00 → 12-01 00:00 (718 h)" in page
    # real data carries no "simulated" banner
    assert not result.simulated and "SIMULATED" not in page
    # and the page prints: A4 page rule and print styles
    assert "@page { size: A4 landscape" in page and "@media print" in page


def test_simulated_data_and_a_failed_verify_are_said_on_the_page(tmp_path: Path) -> None:
    # given a closed month in a directory the demo made, whose sealed hourly usage was rewritten
    # since (still valid Parquet: one hour's GPU-time changed)
    store = build_month(tmp_path / "data")
    (tmp_path / "data" / SIMULATED_MARKER).write_text("simulated data: made by gpuledger demo\n")
    usage = next((tmp_path / "data/usage_hourly").rglob("*.parquet"))
    frame = pl.read_parquet(usage)
    frame.with_columns(pl.col("gpu_microseconds") + 1).write_parquet(usage)
    # when the report is drawn, with the registry's display names
    registry = load_registry(REPO / "examples" / "registry.toml")
    result = render_report(store, PERIOD, tmp_path / "reports", registry=registry)
    page = (tmp_path / "reports" / PERIOD / "report.html").read_text(encoding="utf-8")
    # then the banner says simulated, the seal says verify failed, and entities have their names
    assert result.simulated and "모의 데이터 — SIMULATED DATA" in page
    assert not result.seal.verified and "VERIFY FAILED" in page and "file_changed" in page
    assert "<td>대한민국 정부 (state pool)</td>" in page and "<td>gov</td>" not in page


def test_figures_are_summed_exactly_from_the_ledgers(tmp_path: Path) -> None:
    store = build_month(tmp_path / "data")
    compliance = read_ledger(store, COMPLIANCE_DIR, PERIOD, COMPLIANCE)
    billing = read_ledger(store, BILLING_DIR, PERIOD, BILLING)
    figures = {f.entity: f for f in entity_figures(compliance, billing)}
    # gov: 3 GPUs × 720 h capacity, 3.6 h reported of which 2 h busy → utilisation 55.5556 %
    assert figures["gov"].capacity_gpu_hours == Decimal("2160")
    assert figures["gov"].utilisation == Decimal("0.555556")
    assert figures["gov"].amount_krw == Decimal("9001")
    assert figures["ALL"].amount_krw == Decimal("9926")
    # top projects by billed GPU-hours: snu-llm 4.5 h (3.5 usage + 1 correction) first
    assert top_projects(billing)[0] == ("gov", "snu-llm", Decimal("4.50"), Decimal("9001"))
    # the one vocabulary: reported = attributed + unattributed; billed hours from exact µs
    assert (figures["gov"].attributed_gpu_hours, figures["gov"].unattributed_gpu_hours) == (Decimal("3.5"), Decimal("0.1"))
    assert figures["gov"].billed_gpu_hours == Decimal("4.500000")
    assert figures["ALL"].billed_gpu_hours == Decimal("4.777778")


def test_a_font_without_hangul_is_an_error_not_empty_boxes(tmp_path: Path) -> None:
    # the guard is real: drawing Hangul with DejaVu Sans only raises the missing-glyph warning
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot

    from accounting.report import _save

    figure, axes = pyplot.subplots()
    axes.set_title("GPU 사용 보고서")
    with matplotlib.rc_context({"font.family": "DejaVu Sans"}), pytest.raises(ReportError, match="would not render"):
        _save(pyplot, figure)


def test_no_ledgers_no_report(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="close the month first"):
        render_report(Store(tmp_path), PERIOD)


def test_a_breach_sentence_names_only_a_threshold_that_decided_it() -> None:
    from accounting.breaches import breach_sentence

    # given a low-coverage breach judged at close under a 98 % rule (coverage 97.8 %)
    row = {"gpu_model": "NVIDIA GB200", "allocated_gpus": 24, "reported_gpu_hours": Decimal("17472"),
           "unreported_gpu_hours": Decimal("384"), "busy_gpu_hours": Decimal("9000"),
           "coverage": Decimal("0.978495"), "utilisation": Decimal("0.5")}
    demo = load_registry(REPO / "examples" / "registry-demo.toml")
    national = load_registry(REPO / "examples" / "registry.toml")  # 90 %: did not decide it
    _, with_demo = breach_sentence("low_coverage", row, "삼성전자", demo.thresholds)
    _, with_national = breach_sentence("low_coverage", row, "삼성전자", national.thresholds)
    assert "coverage 97.8% is below 98%: 384.00 GPU-hours of its 24 allocated GPUs" in with_demo
    assert "below the threshold of the registry it was closed with" in with_national and "90%" not in with_national


def test_a_models_breach_shows_where_its_entitys_total_hides_it(tmp_path: Path) -> None:
    from accounting.report import model_rows

    # given the hand-worked month with samsung's H100 below the coverage rule, and the demo's registry
    store = build_month(tmp_path / "data")
    registry = load_registry(REPO / "examples" / "registry.toml")
    result = render_report(store, PERIOD, tmp_path / "reports", registry=registry)
    page = (tmp_path / "reports" / PERIOD / "report.html").read_text(encoding="utf-8")
    # then the page has a row per entity × model, breached rows marked and the breach in words
    rows = model_rows(read_ledger(store, COMPLIANCE_DIR, PERIOD, COMPLIANCE), registry)
    assert [(r.name, r.gpu_model, r.breaches) for r in rows][-1] == (
        "삼성전자 Samsung Electronics", "NVIDIA H100 80GB HBM3", ("low_coverage",))
    assert re.search(r'<tr class="breach"><td>삼성전자 Samsung Electronics</td><td class="text">NVIDIA H100 80GB HBM3</td>'
                     r"<td>1</td><td>0.0%</td><td>10.0%</td><td class=\"text\">저보고 \(low coverage\)</td></tr>", page)
    # and a chart of coverage per model is drawn (and embedded)
    assert "coverage-by-model.png" in result.files and 'alt="coverage-by-model.png"' in page
    # one word for breaches: the page says breaches (위반), never findings
    assert "위반 사항 (breaches)" in page and "finding" not in page.lower()
    # table headers never break inside a Korean word (미보/고)
    assert re.search(r"th \{[^}]*word-break: keep-all", page)


def test_charts_of_simulated_data_say_so_in_the_picture_and_the_file(tmp_path: Path) -> None:
    from PIL import Image

    from accounting.report import SIMULATED_DESCRIPTION

    store = build_month(tmp_path / "data")
    real = render_report(store, PERIOD, tmp_path / "real")
    (tmp_path / "data" / SIMULATED_MARKER).write_text("simulated data: made by gpuledger demo\n")
    simulated = render_report(store, PERIOD, tmp_path / "sim")
    for name in (n for n in simulated.files if n.endswith(".png")):
        with Image.open(tmp_path / "sim" / PERIOD / name) as image:
            assert image.info.get("Description") == SIMULATED_DESCRIPTION, name
            marked = image.convert("RGB").tobytes()
        with Image.open(tmp_path / "real" / PERIOD / name) as image:
            assert "Description" not in image.info, name
            plain = image.convert("RGB").tobytes()
        # the watermark is drawn: the simulated picture's pixels differ from the real one's
        assert marked != plain, name
    assert real.files == simulated.files


def test_a_minute_refused_is_said_in_seconds_not_as_zero_hours() -> None:
    from accounting.breaches import breach_sentence

    row = {"gpu_model": "NVIDIA B200", "allocated_gpus": 0, "reported_gpu_hours": None, "unreported_gpu_hours": None,
           "busy_gpu_hours": None, "quarantined_gpu_hours": Decimal("0.016667"), "coverage": None, "utilisation": None}
    korean, english = breach_sentence("unregistered_entity", row, "lg", None)
    assert "(0.016667 GPU-hours (60 GPU-seconds) in quarantine)" in english
    assert "0.016667 GPU·시간 (60 GPU·초)" in korean


def test_the_pack_readme_and_the_auditors_guide_agree_on_verify_without_all(tmp_path: Path) -> None:
    from accounting.export import export_month

    store = build_month(tmp_path / "data")
    export_month(store, PERIOD, tmp_path / "out")
    readme = " ".join((tmp_path / "out" / PERIOD / "auditor" / "README.md").read_text().split())
    guide = " ".join((REPO / "docs" / "auditors.md").read_text().split())
    # without --all: the whole chain, every signature, the newest period's files; with --all: every file
    for text in (readme, guide):
        assert "re-hashes the newest period's" in text
        assert "walks the whole chain" in text
    assert "`gpuledger verify --public-key operator.pub.pem` re-hashes every sealed file" not in readme
