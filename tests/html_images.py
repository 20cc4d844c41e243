"""The report's HTML as a test reads it: its embedded images decoded, its notes, its open tags."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import numpy as np


class PageParser(HTMLParser):
    """Every <img>'s attributes and the text of every <p class=note>, with the tag stack checked."""

    VOID = {"img", "br", "meta", "hr", "input", "link"}

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.notes: list[str] = []
        self.stack: list[str] = []
        self._in_note = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "p" and a.get("class") == "note":
            self._in_note = True
            self.notes.append("")

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()
        if tag == "p":
            self._in_note = False

    def handle_data(self, data):
        if self._in_note:
            self.notes[-1] += data


def decoded_images(html: str) -> list[tuple[str, np.ndarray]]:
    """(alt, pixels) of every embedded image; fails on any that is not a decodable PNG."""
    from matplotlib.image import imread

    parser = PageParser()
    parser.feed(html)
    out = []
    for img in parser.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,"), src[:40]
        out.append((img.get("alt", ""), imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")))
    return out
