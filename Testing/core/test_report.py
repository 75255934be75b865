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
