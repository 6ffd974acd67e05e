"""Text and tokens for training and evaluation.

Text sources (``--data``):

* ``cpython-docs`` (built in): the English documentation that ships with CPython itself, i.e.
  ``pydoc_data.topics`` and the docstrings of a fixed list of standard-library modules (see
  ``stdlib_docs.py``), cleaned and split 90 / 5 / 5 into train / validation / test by a hash of each
  document's name.  Docstrings differ between Python versions, so the Python version is recorded with
  the content hash.  Built once per interpreter and cached under ``~/.cache/perfmamba/corpora``.
* a local text file or directory: a directory holding ``train.txt``, ``validation.txt`` and ``test.txt``
  (e.g. a copied corpus cache) is used as split; any other directory is read as all its UTF-8 text files
  in sorted order, joined by blank lines; the text is used as it is (not cleaned) and split by position (first 90 % train, next 5 % validation, last 5 % test,
  each cut at a line end);
* ``hf:NAME[:CONFIG]``: a Hugging Face dataset, when ``datasets`` is installed and the hub is reachable.

Tokenizers: byte-level (vocabulary 256, nothing to download), or a ``tokenizer.json`` through the
``tokenizers`` library.  Bits per byte are always counted per UTF-8 byte of the text, whatever the tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from dataclasses import dataclass, field
from typing import Optional

import torch

from perfmamba.errors import PerfMambaError

BUILTIN_CORPUS = "cpython-docs"
SPLITS = ("train", "validation", "test")
# Bump when the cleaning or the split rule changes: the cache key and every recorded hash change with it.
CORPUS_VERSION = 1
_SPLIT_BOUNDS = (90, 95)  # bucket < 90: train, < 95: validation, else test (buckets 0..99)
_BUILD_TIMEOUT_S = 600


def cache_dir() -> str:
    """``$PERFMAMBA_CACHE``, else ``$XDG_CACHE_HOME/perfmamba``, else ``~/.cache/perfmamba``."""
    if os.environ.get("PERFMAMBA_CACHE"):
        return os.environ["PERFMAMBA_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "perfmamba")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -------------------------------------------------------------------------------------------- cleaning
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\ufeff]")  # keeps \t (expanded first) and \n
_TRAILING = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """NFC, \\n line ends, tabs expanded, control characters dropped, trailing spaces stripped, at most one
    blank line in a row, no leading or trailing blank lines.  Indentation is kept (docs hold code)."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.expandtabs(8) for line in text.split("\n"))
    text = _CONTROL.sub("", text)
    text = _TRAILING.sub("\n", text + "\n")
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip("\n")


def split_of(name: str) -> str:
    """The split of a document, from a hash of its name: stable when its text changes between versions."""
    bucket = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") % 100
    return "train" if bucket < _SPLIT_BOUNDS[0] else "validation" if bucket < _SPLIT_BOUNDS[1] else "test"


# ---------------------------------------------------------------------------------------------- corpus
@dataclass
class Corpus:
    """A text corpus with fixed train / validation / test splits and what identifies it."""

    name: str
    splits: dict  # split name -> text
    meta: dict = field(default_factory=dict)

    def text(self, split: str) -> str:
        if split == "all":
            return "\n\n".join(self.splits[s] for s in SPLITS if self.splits.get(s))
        if split not in SPLITS:
            raise PerfMambaError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)} or all")
        return self.splits[split]

    @property
    def sha256(self) -> str:
        """One hash over the three splits (each split's sha256, in order)."""
        parts = "".join(f"{s}:{sha256_text(self.splits.get(s, ''))}\n" for s in SPLITS)
        return hashlib.sha256(parts.encode()).hexdigest()

    @property
    def n_bytes(self) -> int:
        return sum(len(self.splits.get(s, "").encode("utf-8")) for s in SPLITS)

    def describe(self) -> dict:
        """JSON-safe identity: name, size, hashes, and where it came from (Python version for the built-in)."""
        return {"name": self.name, "bytes": self.n_bytes, "sha256": self.sha256,
                "split_bytes": {s: len(self.splits.get(s, "").encode("utf-8")) for s in SPLITS},
                "split_sha256": {s: sha256_text(self.splits.get(s, "")) for s in SPLITS}, **self.meta}

    def summary_line(self) -> str:
        extra = f", Python {self.meta['python']}" if "python" in self.meta else ""
        return f"corpus {self.name}: {self.n_bytes:,} bytes, sha256 {self.sha256[:16]}{extra}"


def _builder_path() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "stdlib_docs.py")


def _builder_key() -> str:
    with open(_builder_path(), "rb") as f:
        source = f.read()
    return hashlib.sha256(source + f"v{CORPUS_VERSION}".encode()).hexdigest()[:12]


def build_cpython_docs(max_modules: Optional[int] = None, python: Optional[str] = None) -> Corpus:
    """Build the built-in corpus now (no cache): collect in a child interpreter, clean, split.

    ``max_modules`` keeps only the first modules of the fixed list and no submodules (a fast subset for
    tests).  ``python`` is the interpreter whose documentation is read (default: this one)."""
    python = python or sys.executable
    with tempfile.TemporaryDirectory(prefix="perfmamba-docs-") as tmp:
        out = os.path.join(tmp, "docs.json")
        cmd = [python, "-I", "-S", _builder_path(), out] + ([str(max_modules)] if max_modules else [])
        try:
            proc = subprocess.run(cmd, cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, timeout=_BUILD_TIMEOUT_S, text=True)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise PerfMambaError(f"could not build the {BUILTIN_CORPUS} corpus with {python} ({e}); "
                                 "pass --data with a text file or directory instead") from None
        if proc.returncode != 0 or not os.path.exists(out):
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise PerfMambaError(f"building the {BUILTIN_CORPUS} corpus failed ({last}); "
                                 "pass --data with a text file or directory instead")
        with open(out, encoding="utf-8") as f:
            raw = json.load(f)
    docs = {s: [] for s in SPLITS}
    n_docs = {s: 0 for s in SPLITS}
    for name, text in raw["documents"]:
        text = clean_text(text)
        if text:
            split = split_of(name)
            docs[split].append(text)
            n_docs[split] += 1
    meta = {"python": raw["python"], "implementation": raw["implementation"], "platform": raw["platform"],
            "corpus_version": CORPUS_VERSION, "documents": n_docs, "skipped_modules": raw["skipped"],
            "subset_modules": max_modules}
    return Corpus(BUILTIN_CORPUS, {s: "\n\n".join(docs[s]) for s in SPLITS}, meta)


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def save_corpus(corpus: Corpus, directory: str) -> None:
    """``train.txt``, ``validation.txt``, ``test.txt`` and ``meta.json``, written into a temporary directory
    beside ``directory`` and renamed into place, so a reader never sees half a corpus."""
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-corpus-", dir=parent)
    try:
        for s in SPLITS:
            _write_text(os.path.join(tmp, f"{s}.txt"), corpus.splits[s])
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({"name": corpus.name, **corpus.describe()}, f, indent=2)
        try:
            os.replace(tmp, directory)
        except OSError:  # another process finished first (the target exists and is not empty)
            if not os.path.isdir(directory):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_split_dir(directory: str, name: Optional[str] = None) -> Corpus:
    splits = {s: _read_text(os.path.join(directory, f"{s}.txt")) for s in SPLITS}
    meta = {}
    meta_path = os.path.join(directory, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            saved = json.load(f)
        meta = {k: v for k, v in saved.items()
                if k not in ("name", "bytes", "sha256", "split_bytes", "split_sha256")}
        name = name or saved.get("name")
    return Corpus(name or os.path.abspath(directory), splits, meta)


def cpython_docs(use_cache: bool = True) -> Corpus:
    """The built-in corpus, from the cache when a verified copy for this interpreter is there."""
    import platform
    key = (f"{BUILTIN_CORPUS}-{platform.python_implementation().lower()}{platform.python_version()}-"
           f"{sys.platform}-{_builder_key()}")
    directory = os.path.join(cache_dir(), "corpora", key)
    if use_cache and os.path.exists(os.path.join(directory, "meta.json")):
        try:
            corpus = _load_split_dir(directory, BUILTIN_CORPUS)
            with open(os.path.join(directory, "meta.json")) as f:
                if json.load(f).get("sha256") == corpus.sha256:
                    corpus.meta["cache"] = directory
                    return corpus
        except (OSError, ValueError, UnicodeDecodeError):
            pass  # damaged cache: rebuild below
        shutil.rmtree(directory, ignore_errors=True)
    corpus = build_cpython_docs()
    if use_cache:
        try:
            save_corpus(corpus, directory)
            corpus.meta["cache"] = directory
        except OSError:
            pass  # a read-only home still gets the corpus, just not cached
    return corpus


def _split_by_position(text: str) -> dict:
    """90 / 5 / 5 by bytes, each cut moved forward to the next line end."""
    n = len(text)
    cuts = []
    for pct in _SPLIT_BOUNDS:
        at = n * pct // 100
        nl = text.find("\n", at)
        cuts.append(n if nl < 0 else nl + 1)
    cuts[1] = max(cuts[1], cuts[0])
    return {"train": text[:cuts[0]], "validation": text[cuts[0]:cuts[1]], "test": text[cuts[1]:]}


def _is_text_file(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(8192)
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start > len(head) - 4  # a multi-byte character cut by the 8 KiB window
    return True


def _local_corpus(path: str) -> Corpus:
    path = os.path.abspath(path)
    if os.path.isdir(path) and all(os.path.isfile(os.path.join(path, f"{s}.txt")) for s in SPLITS):
        return _load_split_dir(path)
    if os.path.isdir(path):
        files = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
        files = [f for f in files if _is_text_file(f)]
        if not files:
            raise PerfMambaError(f"no UTF-8 text files under {path}; --data needs text")
    else:
        files = [path]
    texts = []
    for f in files:
        try:
            texts.append(_read_text(f))
        except UnicodeDecodeError:
            raise PerfMambaError(f"{f} is not UTF-8 text; convert it or leave it out of --data") from None
    # one's own text is read as it is (no cleaning); the files of a directory are joined by a blank line
    text = texts[0] if len(texts) == 1 else "\n\n".join(t.rstrip("\n") for t in texts if t.strip())
    if not text.strip():
        raise PerfMambaError(f"{path} holds no text")
    return Corpus(path, _split_by_position(text), {"files": len(files)})


def _hf_corpus(spec: str) -> Corpus:
    name, _, config = spec[len("hf:"):].partition(":")
    if not name:
        raise PerfMambaError("--data hf: needs a dataset name, e.g. hf:wikitext:wikitext-2-raw-v1")
    try:
        import datasets
    except ImportError:
        raise PerfMambaError(f"--data {spec} needs the datasets package (pip install datasets); or pass a local "
                             "text file or directory") from None
    try:
        ds = datasets.load_dataset(name, config or None)
    except Exception as e:  # offline, unknown dataset, auth: one line for all
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PerfMambaError(f"could not load dataset {spec} ({reason}); pass a local text file instead") from None
    aliases = {"train": ("train",), "validation": ("validation", "valid", "dev"), "test": ("test",)}
    splits = {}
    for split, names in aliases.items():
        found = next((n for n in names if n in ds), None)
        if found is None:
            splits[split] = ""
            continue
        part = ds[found]
        column = "text" if "text" in part.column_names else next(
            (c for c, f in part.features.items() if getattr(f, "dtype", None) == "string"), None)
        if column is None:
            raise PerfMambaError(f"dataset {spec} split {found} has no text column; pass a local text file")
        splits[split] = "\n\n".join(part[column])
    return Corpus(spec, splits, {"dataset": name, "config": config or None})


def load_corpus(source: str = BUILTIN_CORPUS) -> Corpus:
    """``cpython-docs``, a local text file or directory, or ``hf:NAME[:CONFIG]``."""
    if source == BUILTIN_CORPUS:
        return cpython_docs()
    if source.startswith("hf:"):
        return _hf_corpus(source)
    if os.path.exists(source):
        return _local_corpus(source)
    raise PerfMambaError(f"--data {source!r}: no such file or directory; use {BUILTIN_CORPUS}, a text file or "
                         "directory, or hf:NAME[:CONFIG]")


@dataclass
class TextData:
    """The text one evaluation or training run reads, and what identifies it."""

    text: str
    source: str
    split: str
    corpus: dict  # Corpus.describe() of the corpus it came from

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))

    @property
    def sha256(self) -> str:
        return sha256_text(self.text)


def truncate_bytes(text: str, max_bytes: Optional[int]) -> str:
    """At most ``max_bytes`` UTF-8 bytes, never cutting a character in half."""
    if max_bytes is None:
        return text
    if max_bytes < 1:
        raise PerfMambaError(f"--max-bytes must be >= 1, got {max_bytes}")
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def default_split(source: str) -> str:
    """Named corpora are evaluated on their test split; a user's own text file or directory as a whole."""
    return "test" if source == BUILTIN_CORPUS or source.startswith("hf:") else "all"


def load_text(source: str = BUILTIN_CORPUS, split: Optional[str] = None, max_bytes: Optional[int] = None,
              corpus: Optional[Corpus] = None) -> TextData:
    corpus = corpus or load_corpus(source)
    split = split or default_split(source)
    text = truncate_bytes(corpus.text(split), max_bytes)
    if not text:
        raise PerfMambaError(f"split {split!r} of {source} is empty; pick another split or more text")
    return TextData(text, source, split, corpus.describe())


# ------------------------------------------------------------------------------------------ tokenizers
@dataclass
class Tokens:
    """Token ids of a text (1-D integer tensor), the text's UTF-8 size, and the bytes of its first token
    (which has no context, so it is never scored)."""

    ids: torch.Tensor
    n_bytes: int
    first_token_bytes: int


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, nothing to download, every text representable."""

    name = "byte"
    vocab_size = 256

    def encode(self, text: str) -> Tokens:
        data = text.encode("utf-8")
        ids = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)
        return Tokens(ids, len(data), 1 if data else 0)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class HFTokenizer:
    """A ``tokenizer.json`` read with the ``tokenizers`` library (no special tokens added)."""

    def __init__(self, path: str):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise PerfMambaError(f"{path} needs the tokenizers package (pip install tokenizers)") from None
        try:
            self._tok = Tokenizer.from_file(path)
        except Exception as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PerfMambaError(f"cannot read tokenizer {path} ({reason})") from None
        self.name = path
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> Tokens:
        enc = self._tok.encode(text, add_special_tokens=False)
        ids = torch.tensor(enc.ids, dtype=torch.int64)
        first = len(text[:enc.offsets[0][1]].encode("utf-8")) if enc.ids else 0
        return Tokens(ids, len(text.encode("utf-8")), first)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])


def load_tokenizer(spec: str):
    """``byte``, a tokenizer.json file, or a directory holding one."""
    if spec == "byte":
        return ByteTokenizer()
    path = os.path.join(spec, "tokenizer.json") if os.path.isdir(spec) else spec
    if not os.path.isfile(path):
        raise PerfMambaError(f"--tokenizer {spec!r}: no tokenizer.json there; pass byte or a tokenizer.json path")
    return HFTokenizer(path)


def tokenizer_for_model(model_dir: Optional[str], vocab_size: int, override: Optional[str] = None):
    """The tokenizer a model reads: ``override``, else its directory's tokenizer.json, else byte-level for a
    256-token vocabulary; anything else is a one-line error asking for --tokenizer."""
    if override:
        tok = load_tokenizer(override)
    elif model_dir and os.path.isfile(os.path.join(model_dir, "tokenizer.json")):
        tok = HFTokenizer(os.path.join(model_dir, "tokenizer.json"))
    elif vocab_size == ByteTokenizer.vocab_size:
        tok = ByteTokenizer()
    else:
        where = f"{model_dir} has" if model_dir else "the model has"
        raise PerfMambaError(f"{where} no tokenizer.json and a {vocab_size}-token vocabulary; pass "
                             "--tokenizer PATH/tokenizer.json (or --tokenizer byte)")
    if tok.vocab_size > vocab_size:
        raise PerfMambaError(f"tokenizer {tok.name} has {tok.vocab_size} tokens but the model only {vocab_size}; "
                             "pass the model's own tokenizer")
    return tok
