"""Text normalisation, stable document ids and the deterministic calibration/held-out split."""

from __future__ import annotations

import hashlib
import re
import unicodedata

DOC_ID_HEX = 16
CALIBRATION = "calibration"
HELDOUT = "heldout"

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")  # any whitespace but newline (tabs, NBSP, ...)
_TRAILING_SPACE = re.compile(r" +$", re.MULTILINE)
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """NFC, '\\n' newlines, single spaces, no trailing spaces, at most one blank line between paragraphs."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL_CHARS.sub("", text)
    text = _HORIZONTAL_SPACE.sub(" ", text)
    text = _TRAILING_SPACE.sub("", text)
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


def document_id(normalized_text: str) -> str:
    """First 16 hex digits of the sha256 of the text: equal texts get equal ids, whatever their order."""
    return hashlib.sha256(normalized_text.encode("utf-8")).hexdigest()[:DOC_ID_HEX]


def split_of(doc_id: str, heldout_fraction: float) -> str:
    """'heldout' for a pseudo-random share of ids, decided by the id alone (not by order or neighbours)."""
    draw = int(hashlib.sha256(f"split:{doc_id}".encode()).hexdigest()[:8], 16) / 2**32
    return HELDOUT if draw < heldout_fraction else CALIBRATION
