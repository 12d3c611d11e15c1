#!/usr/bin/env python3
"""Check a report: every <img> the HTML pages reference exists, is a valid PNG, and is not blank
(pixel variance > 0); the index has every section; expected texts are present.
With --max-width W, no PNG is wider than W pixels (the page is 1200 px wide).
usage: check_report.py REPORT_DIR [--expect TEXT]... [--expect-figures N] [--max-width W]"""
import argparse
import os
import re
import struct
import sys
import zlib

SECTIONS = ["provenance", "training", "evaluation", "sweeps", "flow", "correlations", "sae", "features", "tables"]


def png_pixels(path):
    """Decode an 8-bit non-interlaced PNG (what matplotlib writes) with zlib only: (w, h, channels, rows)."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG signature")
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        n, typ = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        crc = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]
        if zlib.crc32(typ + chunk) & 0xffffffff != crc:
            raise ValueError("bad CRC in chunk %r" % typ)
        if typ == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", chunk)
        elif typ == b"IDAT":
            idat += chunk
        elif typ == b"IEND":
            break
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = ihdr
    if depth != 8 or interlace:
        raise ValueError("unsupported PNG depth %d / interlace %d" % (depth, interlace))
    ch = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    raw = zlib.decompress(idat)
    stride = w * ch
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - ch] if i >= ch else 0
            b = prev[i]
            c = prev[i - ch] if i >= ch else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, ch, rows


def variance(rows):
    n = s = s2 = 0
    for r in rows[::3]:
        for v in r[::7]:
            n += 1
            s += v
            s2 += v * v
    return s2 / n - (s / n) ** 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("report")
    ap.add_argument("--expect", action="append", default=[])
    ap.add_argument("--expect-figures", type=int, default=-1)
    ap.add_argument("--max-width", type=int, default=0)
    ap.add_argument("--sections", default=",".join(SECTIONS))
    a = ap.parse_args()
    bad = []
    index = os.path.join(a.report, "index.html")
    text = open(index, encoding="utf-8").read()
    pages = [index] + [os.path.join(a.report, p) for p in re.findall(r'href="(features_[^"]+)"', text)]
    nimg = 0
    for page in pages:
        if not os.path.isfile(page):
            bad.append("%s: linked page missing" % page)
            continue
        for src in re.findall(r'<img src="([^"]+)"', open(page, encoding="utf-8").read()):
            nimg += 1
            p = os.path.join(a.report, src)
            try:
                w, h, ch, rows = png_pixels(p)
                v = variance(rows)
                if w < 50 or h < 50 or v <= 0:
                    bad.append("%s: blank or tiny (%dx%d, variance %g)" % (src, w, h, v))
                if a.max_width and w > a.max_width:
                    bad.append("%s: %d px wide, wider than %d" % (src, w, a.max_width))
            except (OSError, ValueError, KeyError, zlib.error) as e:
                bad.append("%s: %s" % (src, e))
    for s in a.sections.split(","):
        if s and '<section id="%s">' % s not in text:
            bad.append("index.html: section %s missing" % s)
    if "section failed" in text:
        bad.append("index.html: a section failed")
    for e in a.expect:
        if e not in "".join(open(p, encoding="utf-8").read() for p in pages if os.path.isfile(p)):
            bad.append("report does not contain %r" % e)
    if a.expect_figures >= 0 and nimg != a.expect_figures:
        bad.append("%d figures referenced, expected %d" % (nimg, a.expect_figures))
    for b in bad:
        print("FAIL", b)
    print("%d figures checked, %d problems" % (nimg, len(bad)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
