"""The first celestial header of a FITS stream, as its card images: no astropy ``Header``.

Parsing a header into astropy's ``Card`` objects, then rendering it back into text for
wcslib (what ``WCS(Header)`` does), was most of a verdict's CPU: ~2 of ~3 ms for a
DP0.2 calexp. wcslib reads header text itself, so this module walks the 2880-byte
blocks, reads the few cards that say where the next HDU starts and whether this one is
celestial, and hands the text on (FITS 4.0, sections 3.3 and 4).

It only ever answers "here it is". Anything it cannot read with certainty (no ``SIMPLE``
or ``XTENSION`` where one belongs, no ``END``, an unknown ``BITPIX``, random groups, a
celestial header without a 2-D grid) is ``None``, and astropy's reading decides, with its
own lenience and its own words (:func:`obsharvest.verify.containment.read_wcs_header`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import BinaryIO

BLOCK = 2880
CARD = 80
MAX_HEADER_BLOCKS = 1000  # 2.8 MB of cards: beyond this it is not a header worth trusting
MAX_HDUS = 1000
CELESTIAL = frozenset({b"RA--", b"DEC-", b"GLON", b"GLAT", b"ELON", b"ELAT", b"SLON", b"SLAT"})
_BITPIX = frozenset({8, 16, 32, 64, -32, -64})
_END = b"END" + b" " * 5
_NAXIS_N = re.compile(rb"NAXIS(\d{1,3})")
_STRUCTURE = frozenset({b"SIMPLE", b"XTENSION", b"BITPIX", b"NAXIS", b"PCOUNT", b"GCOUNT"})
_STRUCTURE |= frozenset({b"GROUPS", b"ZNAXIS1", b"ZNAXIS2"})


@dataclass(frozen=True)
class HeaderText:
    """One HDU's header as served: its index, its card images (``END`` included) and its
    pixel grid ``(NAXIS1, NAXIS2)`` (``ZNAXISn`` for a tile-compressed image)."""

    hdu: int
    text: bytes
    shape: tuple[int, int]


def first_celestial(stream: BinaryIO) -> HeaderText | None:
    """The first HDU whose ``CTYPEn`` name a celestial axis, read from the start of
    ``stream`` (a seekable binary file; only header blocks are read, data is skipped)."""
    position = 0
    for index in range(MAX_HDUS):
        text = _header_at(stream, position, first=index == 0)
        if text is None:
            return None
        values = _structure(text)
        if _has_celestial_ctype(text):
            shape = _grid(values)
            return None if shape is None else HeaderText(index, text, shape)
        size = _data_size(values)
        if size is None:
            return None
        position += _padded(len(text)) + _padded(size)
    return None


def _header_at(stream: BinaryIO, position: int, *, first: bool) -> bytes | None:
    """The cards from ``position`` up to and including ``END``; None if they are not a
    header (wrong first keyword, no ``END`` before the stream or the block limit ends)."""
    stream.seek(position)
    cards = bytearray()
    for _ in range(MAX_HEADER_BLOCKS):
        block = _read_block(stream)
        if block is None:
            return None
        if not cards and not block.startswith(b"SIMPLE  =" if first else b"XTENSION="):
            return None
        for start in range(0, BLOCK, CARD):
            if block[start : start + 8] == _END:
                cards += block[: start + CARD]
                return bytes(cards)
        cards += block
    return None


def _read_block(stream: BinaryIO) -> bytes | None:
    data = b""
    while len(data) < BLOCK:
        more = stream.read(BLOCK - len(data))
        if not more:
            return None
        data += more
    return data


def _cards(text: bytes):
    for start in range(0, len(text), CARD):
        yield text[start : start + CARD]


def _has_celestial_ctype(text: bytes) -> bool:
    """As :func:`obsharvest.verify.containment._has_celestial_ctype`: any ``CTYPE``
    keyword (alternate ones too) whose value starts with a celestial axis name."""
    for card in _cards(text):
        if card.startswith(b"CTYPE") and card[8:10] == b"= ":
            value = _string(card[10:])
            if value is not None and value[:4].upper() in CELESTIAL:
                return True
    return False


def _structure(text: bytes) -> dict[bytes, bytes]:
    """The raw values of the cards that place the data and size the grid."""
    values: dict[bytes, bytes] = {}
    for card in _cards(text):
        keyword = card[:8].rstrip()
        if card[8:10] != b"= ":
            continue
        if keyword in _STRUCTURE or _NAXIS_N.fullmatch(keyword):
            values.setdefault(keyword, card[10:].split(b"/", 1)[0].strip())
    return values


def _string(field: bytes) -> bytes | None:
    """A card's quoted string value (``''`` is a quote), or None if it is not one."""
    field = field.lstrip()
    if not field.startswith(b"'"):
        return None
    out = bytearray()
    i = 1
    while i < len(field):
        if field[i : i + 1] == b"'":
            if field[i + 1 : i + 2] == b"'":
                out += b"'"
                i += 2
                continue
            return bytes(out)
        out += field[i : i + 1]
        i += 1
    return None


def _int(values: dict[bytes, bytes], keyword: bytes, default: int | None = None) -> int | None:
    raw = values.get(keyword)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        return None


def _grid(values: dict[bytes, bytes]) -> tuple[int, int] | None:
    """As :func:`obsharvest.verify.containment._grid_shape`: ``ZNAXISn``, else ``NAXISn``."""
    for prefix in (b"ZNAXIS", b"NAXIS"):
        nx, ny = _int(values, prefix + b"1"), _int(values, prefix + b"2")
        if nx is not None and ny is not None and nx > 0 and ny > 0:
            return nx, ny
    return None


def _data_size(values: dict[bytes, bytes]) -> int | None:
    """Bytes of data after the header (FITS 4.0 eq. 2), or None when unsure."""
    bitpix, naxis = _int(values, b"BITPIX"), _int(values, b"NAXIS")
    if bitpix not in _BITPIX or naxis is None or not 0 <= naxis <= 999:
        return None
    if values.get(b"GROUPS") == b"T":
        return None  # random groups: rare enough to leave to astropy
    if naxis == 0:
        return 0
    count = 1
    for n in range(1, naxis + 1):
        length = _int(values, b"NAXIS%d" % n)
        if length is None or length < 0:
            return None
        count *= length
    pcount, gcount = _int(values, b"PCOUNT", 0), _int(values, b"GCOUNT", 1)
    if pcount is None or gcount is None or pcount < 0 or gcount < 0:
        return None
    return abs(bitpix) // 8 * gcount * (pcount + count)


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK
