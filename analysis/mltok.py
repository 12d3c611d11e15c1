"""Token-id decoding for mergelens reports, without the C library.

Reads a mergelens tokenizer file (format `mergelens.tokenizer` v1: /vocab/bytes [total] uint8,
/vocab/offsets [V+1] int64, /vocab/flags [V] uint8; 1 = special, 2 = byte fallback) or a Hugging
Face `tokenizer.json` (BPE vocabulary; GPT-2 byte-level or "\u2581" metaspace strings).
Token i of a mergelens file is bytes[offsets[i]:offsets[i+1]], exactly what ml_tokenizer_decode
concatenates.
"""
import json


def _gpt2_byte_decoder():
    """Inverse of GPT-2's bytes_to_unicode map (printable stand-ins for the 256 bytes)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + \
        list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Tokenizer:
    """tokens[i] (bytes) and special[i] (bool) for every id; decode(ids) -> str."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            head = f.read(8)
        if head.startswith(b"\x89HDF"):
            self._load_h5(path)
        else:
            self._load_json(path)

    def _load_h5(self, path):
        import h5py
        import numpy as np
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format", b"")
            fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
            if fmt != "mergelens.tokenizer":
                raise ValueError("%s: format is '%s', expected 'mergelens.tokenizer'" % (path, fmt))
            data = np.asarray(f["vocab/bytes"][()], dtype=np.uint8).tobytes()
            off = np.asarray(f["vocab/offsets"][()], dtype=np.int64)
            flags = np.asarray(f["vocab/flags"][()], dtype=np.uint8) if "vocab/flags" in f \
                else np.zeros(len(off) - 1, np.uint8)
            self.strip_decode = int(f.attrs.get("strip_decode", 0))
        self.tokens = [data[off[i]:off[i + 1]] for i in range(len(off) - 1)]
        self.special = [bool(x & 1) for x in flags]

    def _load_json(self, path):
        with open(path, "r", encoding="utf-8") as f:
            js = json.load(f)
        model = js.get("model") or {}
        vocab = dict(model.get("vocab") or {})
        specials = set()
        for at in js.get("added_tokens") or []:
            vocab[at["content"]] = at["id"]
            if at.get("special"):
                specials.add(at["id"])
        byte_level = "ByteLevel" in json.dumps(js.get("pre_tokenizer")) or \
            "ByteLevel" in json.dumps(js.get("decoder"))
        dec = _gpt2_byte_decoder() if byte_level else None
        n = max(vocab.values()) + 1 if vocab else 0
        self.tokens = [b""] * n
        self.special = [False] * n
        for s, i in vocab.items():
            if i in specials:
                b = s.encode("utf-8")
            elif dec is not None and all(c in dec for c in s):
                b = bytes(dec[c] for c in s)
            elif len(s) == 6 and s.startswith("<0x") and s.endswith(">"):
                b = bytes([int(s[3:5], 16)])
            else:
                b = s.replace("\u2581", " ").encode("utf-8")
            self.tokens[i] = b
            self.special[i] = i in specials
        self.strip_decode = 0 if byte_level else 1

    def __len__(self):
        return len(self.tokens)

    def token_bytes(self, i):
        if i < 0 or i >= len(self.tokens):
            raise ValueError("token id %d is outside the vocabulary [0, %d)" % (i, len(self.tokens)))
        return self.tokens[i]

    def token_text(self, i):
        """One token as text (invalid UTF-8 pieces of multi-byte characters become U+FFFD)."""
        return self.token_bytes(i).decode("utf-8", errors="replace")

    def decode(self, ids):
        """Same bytes as ml_tokenizer_decode, as text."""
        b = b"".join(self.token_bytes(int(i)) for i in ids)
        if self.strip_decode and b.startswith(b" "):
            b = b[1:]
        return b.decode("utf-8", errors="replace")
