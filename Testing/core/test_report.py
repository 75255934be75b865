"""The cohort report: a static page whose every image exists and decodes, worst cases first, names escaped."""

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

from PIL import Image

from conftest import toy_knee
from kneeseg.labels import SEPARATE_BONES
from kneeseg.report import THUMBNAIL_FOLDER, case_thumbnail, write_report


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.cases, self._in_bold = [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        self._in_bold = tag == "b"

    def handle_data(self, data):
        if self._in_bold:
            self.cases.append(data)
            self._in_bold = False


def test_every_image_exists_and_decodes_and_the_worst_case_comes_first(tmp_path):
    image, labels = toy_knee()
    rows = []
    for case, score in (("good knee", 0.95), ("<script>alert(1)</script>", 0.91), ("worst#1", 0.42)):
        case_thumbnail(image, labels, SEPARATE_BONES, tmp_path / THUMBNAIL_FOLDER / f"{case}.png")
        rows.append({"case": case, "status": "done", "volumes_ml": {"Femur": 1.5, "Tibia": 1.0},
                     "quality_score": score, "quality_flag": score < 0.5})
    rows.append({"case": "broken", "status": "failed", "error": "not a readable image"})
    path = write_report(rows, tmp_path, SEPARATE_BONES)
    text = path.read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text
    page = _Page()
    page.feed(text)
    assert page.cases == ["broken", "worst#1", "<script>alert(1)</script>", "good knee"]
    assert len(page.images) == 4  # the legend and three thumbnails (the failed case has none)
    for src in page.images:
        picture = tmp_path / Path(unquote(src))
        assert picture.is_file(), src
        with Image.open(picture) as im:
            im.load()
            assert im.width > 10 and im.height > 10


def test_the_summary_carries_score_flag_and_reasons_worst_first_and_the_page_shows_the_reasons(tmp_path):
    import csv

    from kneeseg.workflows.cohort import read_summary, write_summary

    def row(case, score, reasons=()):
        return {"case": case, "input": f"{case}.nrrd", "status": "done", "error": "",
                "volumes_ml": {"Femur": 150.0}, "quality": {"score": score, "flag": score < 0.5, "reasons": list(reasons)}}

    summary = tmp_path / "summary.csv"
    write_summary(summary, [row("a-good", 0.9), row("b-bad", 0.2, ["Femur: the volume is outside the range (0.00)",
                                                                       "Tibia: pieces (0.40)"])], ["Femur"])
    write_summary(summary, [row("c-middle", 0.6), {"case": "d-broken", "input": "d.nrrd", "status": "failed",
                                                   "error": "not a readable image"}], ["Femur"])
    with open(summary, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["d-broken", "b-bad", "c-middle", "a-good"]  # worst first
    assert rows[1]["quality_score"] == "0.2" and rows[1]["quality_flag"] == "True"
    assert rows[1]["quality_reasons"] == "Femur: the volume is outside the range (0.00); Tibia: pieces (0.40)"
    assert rows[3]["quality_flag"] == "False" and rows[0]["quality_score"] == ""
    page = write_report(read_summary(summary), tmp_path, SEPARATE_BONES).read_text()
    assert "Tibia: pieces (0.40)" in page and page.count("class='flagged'") == 1
