"""The built-in corpus, local text sources and tokenizers."""

import json
import os
import time

import pytest

from perfmamba.errors import PerfMambaError
from perfmamba.eval import data
from perfmamba.eval.data import (ByteTokenizer, build_cpython_docs, clean_text, cpython_docs, load_corpus,
                                 load_text, load_tokenizer, split_of, tokenizer_for_model, truncate_bytes)


def test_full_corpus_build_is_deterministic():
    t0 = time.perf_counter()
    first = build_cpython_docs()
    seconds = time.perf_counter() - t0
    second = build_cpython_docs()
    assert first.sha256 == second.sha256
    assert first.splits == second.splits
    desc = first.describe()
    assert desc["python"] and desc["bytes"] > 500_000, desc["bytes"]
    sizes = desc["split_bytes"]
    assert sizes["train"] > 0.8 * desc["bytes"] and sizes["validation"] > 0 and sizes["test"] > 0
    assert seconds < 60


def test_subset_build_is_deterministic_and_smaller():
    a, b = build_cpython_docs(max_modules=3), build_cpython_docs(max_modules=3)
    assert a.sha256 == b.sha256 and a.meta["subset_modules"] == 3
    assert a.n_bytes < build_cpython_docs(max_modules=6).n_bytes


def test_corpus_text_is_clean():
    corpus = build_cpython_docs(max_modules=3)
    for split in data.SPLITS:
        text = corpus.text(split)
        assert not any(c in text for c in "\r\t\x00\x0c\x7f")
        assert "\n\n\n" not in text and " \n" not in text


def test_split_by_document_name_is_stable():
    assert split_of("module:json") == split_of("module:json")
    counts = {s: 0 for s in data.SPLITS}
    for i in range(2000):
        counts[split_of(f"doc{i}")] += 1
    assert 1700 < counts["train"] < 1900 and 50 < counts["validation"] < 150 and 50 < counts["test"] < 150


def test_clean_text():
    raw = "a\r\nb\tc  \n\n\n\nd\x00\x07e\u200b\n\x85f\n"
    assert clean_text(raw) == "a\nb       c\n\nde\nf"
    assert clean_text("  indented\n    more") == "  indented\n    more"  # indentation is kept


def test_cache_round_trip_and_repair(tmp_path, monkeypatch):
    monkeypatch.setenv("PERFMAMBA_CACHE", str(tmp_path))
    built = cpython_docs()
    cache = built.meta["cache"]
    assert cache.startswith(str(tmp_path)) and os.path.exists(os.path.join(cache, "meta.json"))
    cached = cpython_docs()
    assert cached.sha256 == built.sha256 and cached.splits == built.splits
    with open(os.path.join(cache, "test.txt"), "a") as f:  # a damaged cache is rebuilt, not trusted
        f.write("tampered")
    repaired = cpython_docs()
    assert repaired.sha256 == built.sha256
    with open(os.path.join(cache, "meta.json")) as f:
        assert json.load(f)["sha256"] == built.sha256


def test_local_file_is_split_by_position(tmp_path):
    path = tmp_path / "notes.txt"
    text = "".join(f"line {i} " + "x" * (i % 7) + "\n" for i in range(1000))
    path.write_text(text)
    corpus = load_corpus(str(path))
    train, val, test = (corpus.text(s) for s in data.SPLITS)
    assert train + val + test == text  # one's own text is used as it is
    assert train.endswith("\n") and val.endswith("\n")  # cuts at line ends
    assert 0.85 < len(train) / len(train + val + test) < 0.95
    assert load_text(str(path)).split == "all"  # one's own text is evaluated whole by default


def test_local_directory_reads_text_files_in_order(tmp_path):
    (tmp_path / "b.txt").write_text("second file\n")
    (tmp_path / "a.md").write_text("first file\n")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02")
    (tmp_path / ".hidden").write_text("never\n")
    corpus = load_corpus(str(tmp_path))
    assert corpus.text("all").replace("\n\n", "|") == "first file|second file"
    assert corpus.meta["files"] == 2


def test_presplit_directory_is_used_as_is(small_corpus_dir):
    corpus = load_corpus(small_corpus_dir)
    assert corpus.name == "cpython-docs" and corpus.meta["subset_modules"] == 6
    assert corpus.sha256 == build_cpython_docs(max_modules=6).sha256


def test_bad_sources_are_one_line_errors(tmp_path):
    with pytest.raises(PerfMambaError, match="no such file"):
        load_corpus(str(tmp_path / "missing.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PerfMambaError, match="no UTF-8 text"):
        load_corpus(str(tmp_path / "empty"))
    with pytest.raises(PerfMambaError, match="unknown split"):
        load_text("cpython-docs", split="dev")


def test_hf_source_needs_datasets():
    try:
        import datasets  # noqa: F401
        pytest.skip("datasets is installed; the offline error path is what this checks")
    except ImportError:
        pass
    with pytest.raises(PerfMambaError, match="datasets"):
        load_corpus("hf:wikitext:wikitext-2-raw-v1")


def test_truncate_bytes_never_splits_a_character():
    assert truncate_bytes("aé€", 4) == "aé"  # é is 2 bytes, € is 3
    assert truncate_bytes("abc", None) == "abc"
    with pytest.raises(PerfMambaError):
        truncate_bytes("abc", 0)


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    tokens = tok.encode("héllo")
    assert tokens.ids.tolist() == list("héllo".encode()) and tokens.n_bytes == 6 and tokens.first_token_bytes == 1
    assert tok.decode(tokens.ids) == "héllo"


def _write_word_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {"[UNK]": 0, "héllo": 1, "world": 2, "the": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))


def test_tokenizer_json_and_resolution(tmp_path):
    pytest.importorskip("tokenizers")
    _write_word_tokenizer(tmp_path / "tokenizer.json")
    tok = load_tokenizer(str(tmp_path))
    tokens = tok.encode("héllo world the")
    assert tokens.ids.tolist() == [1, 2, 3]
    assert tokens.n_bytes == len("héllo world the".encode()) and tokens.first_token_bytes == 6
    assert tokenizer_for_model(str(tmp_path), 8).name.endswith("tokenizer.json")  # the directory's own
    assert tokenizer_for_model(None, 256).name == "byte"
    with pytest.raises(PerfMambaError, match="--tokenizer"):
        tokenizer_for_model(None, 50280)
    with pytest.raises(PerfMambaError, match="only 2"):
        tokenizer_for_model(str(tmp_path), 2)
    with pytest.raises(PerfMambaError, match="no tokenizer.json"):
        load_tokenizer(str(tmp_path / "nothing"))
