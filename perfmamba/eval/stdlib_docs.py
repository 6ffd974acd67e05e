"""Collect the English documentation that ships with CPython: ``pydoc_data.topics`` and the docstrings of a
fixed list of standard-library modules (their classes, functions and methods).

This file is run as a script in a child interpreter (``python -I -S``: no site-packages, no user paths, no
environment), so a module that misbehaves on import cannot touch the caller, and nothing outside the
standard library can shadow a module name.  It imports nothing from perfmamba.  Usage::

    python -I -S stdlib_docs.py OUT.json [MAX_MODULES]

writes ``{"python": ..., "documents": [[name, text], ...], "skipped": [...]}``; documents are in a fixed
order and the text is raw (the caller cleans it).
"""

import contextlib
import importlib
import inspect
import io
import json
import pkgutil
import platform
import sys
import warnings

# Top-level modules present from CPython 3.10 to 3.13 with no deprecation, minus those that act on import
# (this, antigravity), need a display (tkinter, turtle, idlelib), are tests, build tools, Windows-only, or
# machine-generated boilerplate (encodings).  A module missing from an interpreter is skipped.
MODULES = (
    "abc argparse array ast asyncio atexit base64 bdb binascii bisect builtins bz2 cProfile calendar cmath "
    "cmd code codecs codeop collections colorsys compileall concurrent configparser contextlib contextvars "
    "copy copyreg csv ctypes curses dataclasses datetime dbm decimal difflib dis doctest email enum errno "
    "faulthandler fcntl filecmp fileinput fnmatch fractions ftplib functools gc genericpath getopt getpass "
    "gettext glob graphlib grp gzip hashlib heapq hmac html http imaplib importlib inspect io ipaddress "
    "itertools json keyword linecache locale logging lzma mailbox marshal math mimetypes mmap modulefinder "
    "multiprocessing netrc numbers opcode operator optparse os pathlib pdb pickle pickletools pkgutil "
    "platform plistlib poplib posix posixpath pprint profile pstats pty pwd py_compile pyclbr pydoc queue "
    "quopri random re readline reprlib resource rlcompleter runpy sched secrets select selectors shelve "
    "shlex shutil signal smtplib socket socketserver sqlite3 ssl stat statistics string stringprep struct "
    "subprocess symtable sys sysconfig syslog tabnanny tarfile tempfile termios textwrap threading time "
    "timeit token tokenize tomllib trace traceback tracemalloc tty types typing unicodedata unittest urllib "
    "uuid warnings wave weakref webbrowser wsgiref xml xmlrpc zipapp zipfile zipimport zlib zoneinfo"
).split()
# Sub-packages and modules never walked into (tests, platform-specific back ends, command-line mains).
SKIP_PARTS = {"test", "tests", "idle_test", "__main__", "windows_events", "windows_utils", "popen_spawn_win32"}


def _public(name):
    return not name.startswith("_")


def _member_name(name):
    """Public names and documented dunders (``__init__``, ``__enter__``), not private helpers."""
    return _public(name) or (name.startswith("__") and name.endswith("__"))


def _submodules(pkg):
    """Sorted public submodule names of a package, recursively (packages only, not imported yet)."""
    path = getattr(pkg, "__path__", None)
    if path is None:
        return []
    names = sorted(info.name for info in pkgutil.iter_modules(path) if _public(info.name)
                   and info.name not in SKIP_PARTS)
    return [f"{pkg.__name__}.{n}" for n in names]


def _quiet_import(name):
    """The module, or None when importing it fails or prints anything."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
    except (Exception, SystemExit):
        return None
    if out.getvalue() or err.getvalue():
        return None
    return module


def _doc(obj):
    doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else None
    return inspect.cleandoc(doc) if doc else ""


def _member_doc(member):
    if isinstance(member, (classmethod, staticmethod)):
        member = member.__func__
    if isinstance(member, property) or inspect.isroutine(member) or inspect.ismethoddescriptor(member) \
            or inspect.isdatadescriptor(member):
        return _doc(member)
    return ""


def _owned(obj, modname, claimed):
    """Document an object under the module that defines it, or under the first public module that exposes an
    object from a private one (``io.TextIOWrapper`` lives in ``_io``)."""
    owner = getattr(obj, "__module__", None)
    if owner == modname:
        return True
    key = (owner, getattr(obj, "__qualname__", None))
    if isinstance(owner, str) and owner.split(".")[-1].startswith("_") and key not in claimed:
        claimed.add(key)
        return True
    return False


class _Docs:
    """Docstrings seen so far: the same text (an inherited or aliased docstring) is kept only once."""

    def __init__(self):
        self.seen = set()

    def new(self, text):
        if not text or text in self.seen:
            return ""
        self.seen.add(text)
        return text


def module_documents(module, claimed, docs_seen):
    """[(name, text)]: the module with its functions, then one document per class with its methods."""
    modname = module.__name__
    parts = [f"Module {modname}\n\n{docs_seen.new(_doc(module))}"]
    classes = []
    for attr in sorted(dir(module)):
        if not _public(attr):
            continue
        try:
            obj = getattr(module, attr)
        except Exception:
            continue
        if inspect.isclass(obj) and _owned(obj, modname, claimed):
            classes.append((attr, obj))
        elif inspect.isroutine(obj) and _owned(obj, modname, claimed):
            doc = docs_seen.new(_doc(obj))
            if doc:
                parts.append(f"{modname}.{attr}\n\n{doc}")
    docs = [(f"module:{modname}", "\n\n".join(parts))] if len(parts) > 1 or parts[0].strip() != f"Module {modname}" \
        else []
    for attr, cls in classes:
        cparts = [f"class {modname}.{attr}\n\n{docs_seen.new(_doc(cls))}"]
        for mname, member in sorted(vars(cls).items()):
            doc = docs_seen.new(_member_doc(member)) if _member_name(mname) else ""
            if doc:
                cparts.append(f"{modname}.{attr}.{mname}\n\n{doc}")
        if len(cparts) > 1 or cparts[0].strip() != f"class {modname}.{attr}":
            docs.append((f"class:{modname}.{attr}", "\n\n".join(cparts)))
    return docs


def walk(names, claimed, docs_seen, documents, skipped, submodules=True):
    """Append the documents of each module in ``names`` (with ``submodules``, each followed by its
    submodules, depth first, so the order is fixed) to ``documents``, and the names that fail to import to
    ``skipped``.  ``claimed`` and ``docs_seen`` carry over between calls (``module_documents``)."""
    queue = list(names)
    while queue:
        name = queue.pop(0)
        module = _quiet_import(name)
        if module is None:
            skipped.append(name)
            continue
        documents.extend(module_documents(module, claimed, docs_seen))
        if submodules:
            queue[0:0] = _submodules(module)


def collect(max_modules=None):
    documents, skipped, claimed, docs_seen = [], [], set(), _Docs()
    topics = _quiet_import("pydoc_data.topics")
    if topics is not None:
        for key in sorted(topics.topics):
            documents.append((f"topic:{key}", topics.topics[key]))
    walk(MODULES[:max_modules] if max_modules else MODULES, claimed, docs_seen, documents, skipped,
         submodules=not max_modules)
    return {"python": platform.python_version(), "implementation": platform.python_implementation(),
            "platform": sys.platform, "documents": documents, "skipped": skipped}


if __name__ == "__main__":
    warnings.simplefilter("ignore")  # deprecation notices from reading attributes of old modules
    result = collect(int(sys.argv[2]) if len(sys.argv) > 2 else None)
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=True)
