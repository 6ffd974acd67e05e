"""Held-out text that no demo model and no scoring choice has seen: docstrings of the standard-library
modules that the built-in corpus leaves out.

The built-in `cpython-docs` corpus reads a fixed list of modules (``perfmamba.eval.stdlib_docs.MODULES``),
which omits those deprecated in CPython 3.11-3.12 (aifc, cgi, telnetlib, ...; most removed in 3.13) and a
few others (tkinter and turtle need a display to run, not to be read). Their docstrings are the corpus's
kind of text, written by the same project, yet they were in neither the demo models' training text nor
any held-out split used so far. This collects them with the corpus's own extraction and cleaning, after a
pass over the corpus's modules whose only purpose is to mark every docstring already there as seen, so
that an exact duplicate of one (an alias, a shared docstring) is left out. It writes a corpus directory
(``train.txt`` and ``validation.txt`` empty, the text as ``test.txt``, ``meta.json``), which
``--eval-data DIR --eval-split test`` reads:

    python benchmarks/extra_stdlib_text.py OUT_DIR [MODULE ...]

Named modules (installed packages, say ``numpy``) replace the default list: the same extraction then gives
text of the same kind from outside the standard library, again without any docstring the corpus has.
The text depends on the interpreter that runs this and on the packages' versions (both recorded in
``meta.json``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import sys
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from perfmamba.eval import stdlib_docs as sd  # noqa: E402
from perfmamba.eval.data import Corpus, clean_text, save_corpus  # noqa: E402

# Top-level standard-library modules outside sd.MODULES that import quietly without a display
EXTRA_MODULES = ("aifc audioop cgi cgitb chunk crypt imghdr mailcap nis nntplib ossaudiodev pipes sndhdr "
                 "spwd sunau telnetlib uu xdrlib asynchat asyncore smtpd imp lib2to3 distutils tkinter turtle "
                 "ensurepip venv sre_compile sre_parse").split()


def _version(module: str):
    try:
        return importlib.metadata.version(module.split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return None  # a standard-library module


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: python benchmarks/extra_stdlib_text.py OUT_DIR [MODULE ...]")
    out, modules = sys.argv[1], tuple(sys.argv[2:]) or EXTRA_MODULES
    warnings.simplefilter("ignore")
    claimed, seen = set(), sd._Docs()
    for text in __import__("pydoc_data.topics").topics.topics.values():
        seen.new(text)
    sd.walk(sd.MODULES, claimed, seen, [], [])  # marks the corpus's docstrings (and objects) as seen
    documents, skipped = [], []
    sd.walk(modules, claimed, seen, documents, skipped)
    texts = [t for t in (clean_text(text) for _, text in documents) if t]
    text = "\n\n".join(texts)
    meta = {"source": "benchmarks/extra_stdlib_text.py", "python": platform.python_version(),
            "modules": modules, "versions": {m: _version(m) for m in modules}, "skipped_modules": skipped,
            "documents": len(texts),
            "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    name = "stdlib-extra" if modules == EXTRA_MODULES else "docs-" + "-".join(modules)
    save_corpus(Corpus(name, {"train": "", "validation": "", "test": text}, meta), out)
    print(f"{len(texts)} documents, {len(text.encode('utf-8'))} bytes, skipped {skipped or 'none'} -> {out}")


if __name__ == "__main__":
    main()
