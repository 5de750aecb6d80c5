"""Batch analyses in Python: readers and rejects, batched statistics equal to the text alone,
the Parquet output folder, its summary, resume, and refusal of another run's folder."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import assert_png_of, image_values, tick_labels

from attnviz.batch import (
    HEADS_DIR,
    REJECTS_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    Item,
    Reject,
    count_records,
    iter_records,
    read_corpus,
    read_results,
    records_frame,
    run_batch_analysis,
    stat_columns,
    statistics_of,
    summarise,
)
from attnviz.batch.config import BatchConfig, make_config, parse_probe
from attnviz.errors import InputError, cli_terms
from attnviz.extraction import extract
from attnviz.models.loading import load_model

TEXTS = [
    "Emily always wanted to visit Paris so she took some French lessons.",
    "The cat sat.",
    "The trophy did not fit in the suitcase because it was too big!",
    "Hi",
    "A dog chased the cat across the garden, and she hid; transformers attend to tokens?",
    "She said: Emily, the trophy is here.",
]
PROBES = (parse_probe("she:Emily"), parse_probe("it|she:trophy|cat"), parse_probe("@1:@-2"))


def _config(**kw) -> BatchConfig:
    return make_config(**{"probes": PROBES, "batch_size": 4, "texts_per_part": 4, "plots": False, **kw})


def _corpus_lines(tmp_path, n: int = 12) -> list[str]:
    return [TEXTS[i % len(TEXTS)] + f" Number {i}." for i in range(n)]


# -- readers --------------------------------------------------------------------------------
def test_txt_reader_keeps_line_numbers_and_rejects_bad_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"\xef\xbb\xbffirst line\n\n   \nbad \xff\xfe bytes\r\nlast line without newline")
    recs = list(read_corpus(path))
    assert recs[0] == Item(0, 1, "first line")  # BOM dropped
    assert [(r.line, r.reason) for r in recs if isinstance(r, Reject)] == [
        (2, "empty"),
        (3, "empty"),
        (4, "undecodable"),
    ]
    assert recs[-1] == Item(4, 5, "last line without newline")
    assert count_records(path) == 5


def test_jsonl_reader(tmp_path):
    lines = [
        json.dumps({"text": "one", "id": 1}),
        "{not json",
        json.dumps({"body": "no text field"}),
        json.dumps({"text": 42}),
        json.dumps(["a", "list"]),
        "",
        json.dumps({"text": "two"}),
        json.dumps({"body": "other field"}),
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    recs = list(read_corpus(path))
    reasons = [r.reason if isinstance(r, Reject) else r.text for r in recs]
    assert reasons == [
        "one",
        "malformed_json",
        "missing_field",
        "not_text",
        "malformed_json",
        "empty",
        "two",
        "missing_field",
    ]
    assert [r.line for r in recs] == list(range(1, 9))
    body = [r for r in read_corpus(path, field="body") if isinstance(r, Item)]
    assert [(r.line, r.text) for r in body] == [(3, "no text field"), (8, "other field")]


def test_csv_reader_multiline_and_missing_column(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('id,text\n1,hello\n2,"two\nlines"\n3,\n4\n5,end\n', encoding="utf-8")
    recs = list(read_corpus(path))
    assert recs[0] == Item(0, 2, "hello")
    assert recs[1] == Item(1, 3, "two\nlines")
    assert [(r.line, r.reason) for r in recs[2:4]] == [(5, "empty"), (6, "missing_field")]
    assert recs[4] == Item(4, 7, "end")
    assert count_records(path) == 5
    with pytest.raises(InputError, match=r"no column 'body'.*id, text"):
        list(read_corpus(path, column="body"))


def test_parquet_and_gzip_readers(tmp_path):
    pq_path = tmp_path / "c.parquet"
    pd.DataFrame({"sentence": ["a b", None, "c d"]}).to_parquet(pq_path)
    recs = list(read_corpus(pq_path, column="sentence"))
    assert [r.text if isinstance(r, Item) else r.reason for r in recs] == ["a b", "missing_field", "c d"]
    assert count_records(pq_path) == 3
    gz = tmp_path / "c.txt.gz"
    gz.write_bytes(gzip.compress(b"one\ntwo\n"))
    assert [r.text for r in read_corpus(gz)] == ["one", "two"]


def test_python_iterables_and_missing_files(tmp_path):
    recs = list(read_corpus(iter(["a", "", 3, "b"])))
    assert [type(r).__name__ for r in recs] == ["Item", "Reject", "Reject", "Item"]
    assert recs[2].reason == "not_text"
    with pytest.raises(InputError, match="no such input file"):
        list(read_corpus(tmp_path / "nope.txt"))


# -- statistics -----------------------------------------------------------------------------
def _assert_same(batched, alone, where=""):
    assert sorted(batched) == sorted(alone)
    for key, ref in alone.items():
        got = batched[key]
        assert np.array_equal(np.isnan(got), np.isnan(ref)), f"{where} {key}: found-ness differs"
        np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4, err_msg=f"{where} {key}")


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "t5"])
def test_statistics_alone_equal_statistics_in_a_padded_batch(tiny_model_path, arch):
    loaded = load_model(str(tiny_model_path(arch)), device="cpu")
    cfg = _config(batch_size=len(TEXTS), texts_per_part=100)
    recs = list(iter_records(TEXTS, cfg, model=loaded))
    assert [r.text_id for r in recs] == list(range(len(TEXTS)))
    lengths = {r.n_tokens for r in recs}
    assert len(lengths) > 2  # one batch of very different lengths: real padding
    for rec in recs:
        _assert_same(rec.values, statistics_of(extract(rec.text, loaded), cfg), f"{arch} text {rec.text_id}")


@pytest.mark.slow
def test_minilm_statistics_match_extract_alone(minilm):
    cfg = _config(batch_size=8, layers=(0, 3, 5), heads=(1, 2, 9))
    recs = list(iter_records(TEXTS, cfg, model=minilm))
    for rec in recs:
        alone = extract(rec.text, minilm, layers=[0, 3, 5], heads=[1, 2, 9])
        assert rec.values["entropy"].shape == (3, 3)
        _assert_same(rec.values, statistics_of(alone, cfg), f"text {rec.text_id}")
    # the probe is the word-level weight she -> Emily, read straight off the word view
    words = extract(TEXTS[0], minilm, words=True, layers=[0, 3, 5], heads=[1, 2, 9])
    i, j = words.tokens.index("she"), words.tokens.index("Emily")
    np.testing.assert_allclose(recs[0].values["probe_she_emily_ab"], words.attn[:, :, i, j], atol=1e-5)
    np.testing.assert_allclose(recs[0].values["probe_she_emily_ba"], words.attn[:, :, j, i], atol=1e-5)
    assert np.isnan(recs[1].values["probe_she_emily_ab"]).all()  # "The cat sat." has neither word


def test_only_asked_statistics_are_computed(tiny_bert):
    cfg = make_config(statistics="entropy", plots=False)
    assert stat_columns(cfg) == ["entropy"]
    (rec,) = iter_records(["the cat sat"], cfg, model=tiny_bert)
    assert list(rec.values) == ["entropy"]
    frame = records_frame(["the cat sat", "a dog"], cfg, model=tiny_bert)
    assert list(frame.columns) == ["text_id", "layer", "head", "n_tokens", "entropy"]
    assert len(frame) == 2 * 2 * 4


def test_too_long_texts_are_rejected_or_cut(tiny_bert):
    long = "the cat sat on the mat " * 4  # about 26 tokens
    rejects: list[Reject] = []
    recs = list(
        iter_records(["short one", long], _config(max_length=12), model=tiny_bert, on_reject=rejects.append)
    )
    assert [r.text_id for r in recs] == [0]
    assert rejects[0].reason == "too_long" and rejects[0].detail.endswith(
        "set truncate to cut such texts instead"
    )
    assert "--" not in rejects[0].detail  # written into _rejects.jsonl: read by config and Python users too
    cut = list(iter_records([long], _config(max_length=12, truncate=True), model=tiny_bert))
    assert cut[0].n_tokens == 12 and cut[0].truncated > 0


def test_a_bucketed_batch_is_encoded_as_extraction_tokenizes(tiny_model_path):
    from attnviz.batch.analyzer import Analyzer
    from attnviz.batch.bucketing import encode
    from attnviz.batch.corpus import Item
    from attnviz.extraction import tokenize

    loaded = load_model(str(tiny_model_path("gpt2")), device="cpu")  # byte-level: readable labels differ
    texts = ["Café crème, s'il vous plaît.", "naïve", "plain words here"]
    config = _config()
    batches, rejects = Analyzer(loaded, config).bucket([Item(i, i + 1, t) for i, t in enumerate(texts)])
    assert not rejects
    for batch in batches:
        got = encode(loaded, config, batch)
        want = tokenize(loaded, got.texts)
        assert got.input_ids.equal(want.input_ids) and got.attention_mask.equal(want.attention_mask)
        assert (got.tokens, got.pieces, got.offsets, got.special) == (
            want.tokens,
            want.pieces,
            want.offsets,
            want.special,
        )
    assert any("é" in t for b in batches for e in b for t in e.tokens)  # readable, not raw "Ã©"


def test_buckets_limit_padding_and_memory(tiny_bert):
    from attnviz.batch import Analyzer

    cfg = make_config(batch_size=3, attention_memory_mb=1)
    analyzer = Analyzer(tiny_bert, cfg)
    items = [Item(i, i + 1, "cat " * (1 + (i * 7) % 60)) for i in range(12)]  # 3-62 tokens
    batches, rejects = analyzer.bucket(items)
    assert not rejects
    assert sorted(e.item.text_id for b in batches for e in b) == list(range(12))
    for b in batches:
        lengths = [e.n_tokens for e in b]
        assert len(b) <= 3 and lengths == sorted(lengths)
    ranges = sorted((b[0].n_tokens, b[-1].n_tokens) for b in batches)
    for (_, hi), (lo, _) in itertools.pairwise(ranges):
        assert hi <= lo  # bucketed by length: batches do not overlap
    tight = Analyzer(tiny_bert, make_config(batch_size=32, attention_memory_mb=1))
    one_mb = 2**20 // (2 * 4 * 4)  # [q, k] entries per MiB for 2 layers x 4 heads of float32
    tight_batches = tight.bucket(items)[0]
    assert len(tight_batches) > 1  # the budget, not batch_size, cut them
    for b in tight_batches:
        assert len(b) == 1 or len(b) * b[-1].n_tokens ** 2 <= one_mb


# -- the output folder ----------------------------------------------------------------------
def test_run_writes_parts_summary_and_rejects(tiny_bert, tmp_path, monkeypatch, figures):
    from attnviz.heads.patterns import ROLE_NAMES

    saved = figures
    corpus = tmp_path / "c.txt"
    lines = _corpus_lines(tmp_path, 10)
    lines[3] = ""
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    seen = []
    result = run_batch_analysis(corpus, _config(plots=True), out, model=tiny_bert, progress=seen.append)
    assert (result.processed, result.rejected, result.status) == (9, 1, "complete")
    assert seen[-1].done == 10 and seen[-1].total == 10
    assert len(list((out / HEADS_DIR).glob("part-*.parquet"))) == 3  # 4 texts per part
    # the read-back line of the README: side files never get in the way
    frame = pd.read_parquet(out)
    assert len(frame) == 9 * 2 * 4
    assert frame.groupby(["text_id", "layer", "head"]).size().max() == 1
    assert sorted(frame.text_id.unique()) == [i for i in range(10) if i != 3]
    # the README's "lowest-entropy heads" line, against a brute-force mean per head
    lowest = frame.groupby(["layer", "head"])["entropy"].mean().nsmallest(3)
    per_head: dict[tuple[int, int], list[float]] = {}
    for la, h, e in zip(frame["layer"], frame["head"], frame["entropy"], strict=True):
        per_head.setdefault((int(la), int(h)), []).append(float(e))
    brute = sorted((float(np.mean(v)), key) for key, v in per_head.items())[:3]
    assert [tuple(int(x) for x in k) for k in lowest.index] == [key for _, key in brute]
    np.testing.assert_allclose(lowest.to_numpy(), [m for m, _ in brute], rtol=1e-6)
    # summary: mean, std (sample) and count per head equal pandas on the long table
    summary = pd.read_csv(out / SUMMARY_FILE)
    expect = frame.groupby(["layer", "head"])["entropy"].agg(["mean", "std", "count"]).reset_index()
    np.testing.assert_allclose(summary["entropy_mean"], expect["mean"], rtol=1e-5)
    np.testing.assert_allclose(summary["entropy_std"], expect["std"], rtol=1e-4)
    assert (summary["entropy_count"] == expect["count"]).all()
    assert (summary["probe_she_emily_ab_count"] < 9).all()  # only texts holding both words count
    assert set(summary["role"]) <= {
        "self",
        "previous",
        "next",
        "first",
        "last_sep",
        "punctuation",
        "broad",
        "mixed",
    }
    # the plots draw the summary: mean entropy and role per layer x head
    entropy, role = saved["entropy.png"], saved["role.png"]
    np.testing.assert_allclose(image_values(entropy), expect["mean"].to_numpy().reshape(2, 4), rtol=1e-5)
    codes = [ROLE_NAMES.index(r) for r in summary["role"]]
    np.testing.assert_array_equal(image_values(role), np.reshape(codes, (2, 4)))
    assert tick_labels(role, "y") == ["L0", "L1"] and tick_labels(role, "x") == ["H0", "H1", "H2", "H3"]
    assert_png_of(out / "_plots" / "entropy.png", entropy)
    assert_png_of(out / "_plots" / "role.png", role)
    rejects = [json.loads(x) for x in (out / REJECTS_FILE).read_text().splitlines()]
    assert rejects == [{"text_id": 3, "line": 4, "reason": "empty", "detail": "empty text", "excerpt": ""}]
    run = json.loads((out / RUN_FILE).read_text())
    assert run["status"] == "complete" and run["counts"]["texts"] == 9 and run["counts"]["rejected"] == 1
    assert run["config"]["probes"][0]["name"] == "she_emily" and "torch" in run["versions"]
    timings = run["timings"]
    assert timings["forward_s"] > 0 and timings["statistics_s"] > 0 and timings["write_s"] > 0
    parts = sum(timings[f"{k}_s"] for k in ("read", "tokenize", "forward", "statistics", "write"))
    assert parts <= timings["run_s"] + 0.01  # the parts of the run fit inside it
    assert run["sessions"][0]["timings"]["forward"] == timings["forward_s"]
    with_texts = read_results(out, texts=True)
    assert with_texts.loc[with_texts.text_id == 0, "text"].iloc[0] == lines[0]


def test_refuses_another_run_unless_overwrite(tiny_bert, tmp_path):
    out = tmp_path / "out"
    run_batch_analysis(["a cat", "a dog"], _config(), out, model=tiny_bert)
    # a Python caller is told the keywords it passes; the command line shows its flags
    with pytest.raises(
        InputError, match=r"already holds this run.*pass resume=True .* or overwrite=True"
    ) as info:
        run_batch_analysis(["a cat", "a dog"], _config(), out, model=tiny_bert)
    assert "--" not in str(info.value) and "pass --resume to continue it or --overwrite" in info.value.render(
        cli_terms
    )
    with pytest.raises(InputError, match=r"already holds a different run.*pass overwrite=True"):
        run_batch_analysis(["a cat"], _config(statistics="entropy"), out, model=tiny_bert)
    with pytest.raises(InputError, match=r"different settings \(statistics\)"):
        run_batch_analysis(["a cat"], _config(statistics="entropy"), out, model=tiny_bert, resume=True)
    done = run_batch_analysis(["a cat"], _config(statistics="entropy"), out, model=tiny_bert, overwrite=True)
    assert done.processed == 1 and len(pd.read_parquet(out)) == 8
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        run_batch_analysis(["a cat"], _config(), foreign, model=tiny_bert)
    run_batch_analysis(["a cat"], _config(), foreign, model=tiny_bert, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"  # overwrite removes only our own files


def test_resume_after_a_crash_neither_duplicates_nor_skips(tiny_bert, tmp_path):
    lines = _corpus_lines(tmp_path, 14)
    lines[5] = ""
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"

    class Crash(Exception):
        pass

    calls = {"n": 0}

    def crash_after_first_part(p):
        calls["n"] += 1
        if p.processed >= 4 and (out / HEADS_DIR / "part-00000.parquet").exists():
            raise Crash

    with pytest.raises(Crash):
        run_batch_analysis(
            corpus, _config(batch_size=2), out, model=tiny_bert, progress=crash_after_first_part
        )
    assert json.loads((out / RUN_FILE).read_text())["status"] == "failed"
    partial = pd.read_parquet(out)
    assert 0 < partial.text_id.nunique() < 13
    # debris of a write cut short, and a texts part whose statistics part never landed
    (out / HEADS_DIR / ".part-00009.parquet.tmp").write_bytes(b"half")
    (out / "_texts" / "part-00007.parquet").write_bytes(b"orphan")
    with open(out / REJECTS_FILE, "a") as f:
        f.write('{"text_id": 99, "li')  # a reject line cut short by the kill
    result = run_batch_analysis(corpus, _config(batch_size=2), out, model=tiny_bert, resume=True)
    assert result.resumed == partial.text_id.nunique()
    assert result.resumed + result.processed == 13
    frame = pd.read_parquet(out)
    assert sorted(frame.text_id.unique()) == [i for i in range(14) if i != 5]
    assert frame.groupby(["text_id", "layer", "head"]).size().max() == 1
    rejects = (out / REJECTS_FILE).read_text().splitlines()
    assert [json.loads(x)["text_id"] for x in rejects] == [5]  # not written twice
    assert not (out / HEADS_DIR / ".part-00009.parquet.tmp").exists()
    assert not (out / "_texts" / "part-00007.parquet").exists()
    texts = pd.read_parquet(out / "_texts")
    assert sorted(texts.text_id) == sorted(frame.text_id.unique())
    run = json.loads((out / RUN_FILE).read_text())
    assert run["status"] == "complete" and len(run["sessions"]) == 2


def test_interrupt_keeps_complete_batches(tiny_bert, tmp_path):
    out = tmp_path / "out"

    def interrupt(p):
        if p.processed >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch_analysis(
            _corpus_lines(tmp_path, 12),
            _config(batch_size=3, texts_per_part=100),
            out,
            model=tiny_bert,
            progress=interrupt,
        )
    run = json.loads((out / RUN_FILE).read_text())
    assert run["status"] == "interrupted"
    assert pd.read_parquet(out).text_id.nunique() == 3  # the finished batch was committed on the way out


def test_save_attention_writes_the_raw_tensors(tiny_bert, tmp_path):
    from safetensors.numpy import load_file

    out = tmp_path / "out"
    run_batch_analysis(TEXTS[:3], _config(save_attention=True, layers=(1,)), out, model=tiny_bert)
    shards = sorted((out / "_attention").glob("*.safetensors"))
    assert shards
    arrays = {k: v for s in shards for k, v in load_file(s).items()}
    assert sorted(arrays) == ["0", "1", "2"]
    for i in range(3):
        np.testing.assert_allclose(arrays[str(i)], extract(TEXTS[i], tiny_bert, layers=[1]).attn, atol=1e-5)


def test_summarise_streams_parts(tiny_bert, tmp_path):
    out = tmp_path / "out"
    run_batch_analysis(
        _corpus_lines(tmp_path, 9), _config(texts_per_part=2, statistics="entropy"), out, model=tiny_bert
    )
    summary = summarise(out)
    frame = pd.read_parquet(out)
    expect = frame.groupby(["layer", "head"])["entropy"].std().to_numpy()
    np.testing.assert_allclose(summary["entropy_std"], expect, rtol=1e-4)
    assert "role" not in summary  # no pattern scores kept, so no roles


def test_statistics_are_declared_once_in_column_order():
    from attnviz.batch import STATISTICS
    from attnviz.heads.patterns import PATTERNS

    names = [s.column for s in STATISTICS]
    patterns = [f"pattern_{p}" for p in PATTERNS]
    norm = ["special_attention", "special_norm"]
    assert names == ["entropy", "max_weight", "mean_row_max", "special", *patterns, *norm]
    assert all((s.row is None) != (s.keys is None) for s in STATISTICS)  # one way to compute each
    cfg = make_config(statistics="special,entropy", probes=(parse_probe("a:b"),))
    assert stat_columns(cfg) == ["entropy", "special", "probe_a_b_ab", "probe_a_b_ba"]


# -- trust: what the folder, the input and the disk can do to a run ------------------------------
def test_overwrite_never_deletes_files_attnviz_did_not_write(tiny_bert, tmp_path):
    user = tmp_path / "u"
    (user / "heads").mkdir(parents=True)
    (user / "heads" / "important.txt").write_text("notes")
    with pytest.raises(InputError, match=r"heads exists but no attnviz run wrote it") as info:
        run_batch_analysis(["a cat"], _config(), user, model=tiny_bert, overwrite=True)
    assert "\n" not in str(info.value)
    assert (user / "heads" / "important.txt").read_text() == "notes"
    # a real run, then files of the user's own inside its folders: --overwrite keeps them
    out = tmp_path / "out"
    run_batch_analysis(_corpus_lines(tmp_path, 9), _config(plots=True), out, model=tiny_bert)
    assert len(list((out / HEADS_DIR).glob("part-*.parquet"))) == 3
    (out / HEADS_DIR / "mine.txt").write_text("mine")
    (out / "_plots" / "sketch.png").write_bytes(b"png")
    (out / "keep.csv").write_text("x")
    again = run_batch_analysis(["a cat"], _config(plots=False), out, model=tiny_bert, overwrite=True)
    assert again.processed == 1
    assert sorted(p.name for p in (out / HEADS_DIR).iterdir()) == ["mine.txt", "part-00000.parquet"]
    assert sorted(p.name for p in (out / "_plots").iterdir()) == ["sketch.png"]  # its plots went
    assert (out / "keep.csv").read_text() == "x"
    assert pd.read_parquet(out / HEADS_DIR / "part-00000.parquet").text_id.tolist() == [0] * 8


def test_a_file_named_gz_that_is_not_gzip_is_a_clear_error(tmp_path):
    from attnviz.batch import check_input

    fake = tmp_path / "c.txt.gz"
    fake.write_text("plain text\n")
    for call in (lambda: check_input(fake, BatchConfig()), lambda: list(read_corpus(fake))):
        with pytest.raises(InputError, match=r"named \.gz but is not gzip-compressed"):
            call()
    empty = tmp_path / "e.txt"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"nothing to read: .*e\.txt is empty"):
        check_input(empty, BatchConfig())


def test_a_cut_short_gz_is_an_error_that_keeps_committed_parts(tiny_bert, tmp_path):
    data = gzip.compress(("\n".join(_corpus_lines(tmp_path, 40)) + "\n").encode())
    cut = tmp_path / "c.txt.gz"
    cut.write_bytes(data[:-12])  # the end marker and the last bytes are gone
    with pytest.raises(InputError, match=r"cut short.*texts before it are committed") as info:
        run_batch_analysis(cut, _config(batch_size=2), tmp_path / "out", model=tiny_bert)
    assert not isinstance(info.value, EOFError) and "\n" not in str(info.value)
    run = json.loads((tmp_path / "out" / RUN_FILE).read_text())
    frame = pd.read_parquet(tmp_path / "out")
    assert run["status"] == "failed" and run["counts"]["texts"] == frame.text_id.nunique() >= 4
    assert sorted(frame.text_id.unique()) == list(range(frame.text_id.nunique()))


def test_csv_unterminated_quote_rejects_its_record_and_reads_on(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('id,text\n1,"two\nlines"\n2,"open quote\n3,next\n4,last\n', encoding="utf-8")
    recs = list(read_corpus(path))
    assert recs[0] == Item(0, 2, "two\nlines")
    assert isinstance(recs[1], Reject) and (recs[1].line, recs[1].reason) == (4, "malformed_csv")
    assert "never closes" in recs[1].detail and recs[1].excerpt == '2,"open quote'
    assert recs[2:] == [Item(2, 5, "next"), Item(3, 6, "last")]
    # a quote closed on the last line, without a final newline, is fine
    ok = tmp_path / "ok.csv"
    ok.write_text('text\n"a\nb"', encoding="utf-8")
    assert list(read_corpus(ok)) == [Item(0, 2, "a\nb")]


def test_empty_input_is_an_error_and_leaves_no_folder(tiny_bert, tmp_path):
    for empty in ([], tmp_path / "blank.csv"):
        if isinstance(empty, Path):
            empty.write_text("text\n")  # a header, no records
        out = tmp_path / f"out-{type(empty).__name__}"
        with pytest.raises(InputError, match=r"nothing was read: .* held no records"):
            run_batch_analysis(empty, _config(), out, model=tiny_bert)
        assert not out.exists()


def test_disk_full_is_one_line_and_committed_parts_survive(tiny_bert, tmp_path, monkeypatch):
    import errno

    from attnviz.batch import OutputError
    from attnviz.batch.store import Store

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(_corpus_lines(tmp_path, 12)) + "\n")
    out = tmp_path / "out"
    real = Store._write_table
    calls = {"n": 0}

    def fill_up(self, path, table):
        calls["n"] += 1
        if calls["n"] > 2:  # the texts and heads tables of part 0 land; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, path, table)

    monkeypatch.setattr(Store, "_write_table", fill_up)
    with pytest.raises(OutputError) as info:
        run_batch_analysis(corpus, _config(), out, model=tiny_bert)
    assert str(info.value) == (
        f"no space left on {out}; nothing committed is lost, free space and rerun with resume=True"
    )
    assert info.value.render(cli_terms).endswith("rerun with --resume")
    assert pd.read_parquet(out).text_id.unique().tolist() == [0, 1, 2, 3]
    assert not list((out / HEADS_DIR).glob(".*.tmp")) and not list((out / "_texts").glob(".*.tmp"))
    monkeypatch.setattr(Store, "_write_table", real)
    done = run_batch_analysis(corpus, _config(), out, model=tiny_bert, resume=True)
    assert (done.resumed, done.processed) == (4, 8)
    frame = pd.read_parquet(out)
    assert sorted(frame.text_id.unique()) == list(range(12))
    assert frame.groupby(["text_id", "layer", "head"]).size().max() == 1


def test_output_folder_checks_come_before_the_model(tmp_path, monkeypatch):
    import errno
    import pathlib

    from attnviz.batch import OutputError, OutputFolder

    busy = r"another attnviz batch is writing to .*pick another outdir folder"
    with (
        OutputFolder(tmp_path / "out", BatchConfig(), ["x"], False, False),
        pytest.raises(InputError, match=busy) as info,
    ):
        OutputFolder(tmp_path / "out", BatchConfig(), ["x"], False, False)
    assert info.value.render(cli_terms).endswith("pick another -o folder")
    assert not (tmp_path / "out").exists()  # made for a run that never wrote: removed again
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="exists and is not a folder"):
        OutputFolder(tmp_path / "file", BatchConfig(), ["x"], False, False)

    def denied(self, *a, **k):
        raise PermissionError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", denied)
    with pytest.raises(
        OutputError, match=r"cannot write to .*ro: read-only file system; pick a folder .* outdir$"
    ):
        OutputFolder(tmp_path / "ro", BatchConfig(), ["x"], False, False)


def test_the_package_stays_small():
    """Issue 11's limits for attnviz.batch: no module over 600 lines, no function over 80."""
    import ast

    import attnviz.batch

    for path in Path(attnviz.batch.__file__).parent.glob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert source.count("\n") <= 600, path.name
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno - node.lineno + 1 <= 80, f"{path.name}: {node.name}"


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_norm_statistic_in_a_padded_batch_equals_weighting_statistics(tiny_model_path, arch):
    """`--stats norm` (off by default) equals analyses.norms.weighting_statistics text by text."""
    from attnviz.analyses.norms import norm_weighted
    from attnviz.batch.config import DEFAULT_STATISTICS

    assert "norm" not in DEFAULT_STATISTICS
    loaded = load_model(str(tiny_model_path(arch)), device="cpu")
    cfg = make_config(statistics="norm,entropy", batch_size=len(TEXTS), plots=False, heads=(0, 2))
    assert stat_columns(cfg) == ["entropy", "special_attention", "special_norm"]
    recs = list(iter_records(TEXTS, cfg, model=loaded))
    assert len({r.n_tokens for r in recs}) > 2  # real padding
    for rec in recs:
        alone = extract(rec.text, loaded, heads=[0, 2], qkv=True)
        ref = statistics_of(alone, cfg, norm_weighted(alone, loaded))
        _assert_same(rec.values, ref, f"{arch} text {rec.text_id}")
    if arch == "bert":  # [CLS]/[SEP] exist: the value norms move the share (gpt2 has no special tokens)
        gaps = [float(np.abs(r.values["special_norm"] - r.values["special_attention"]).max()) for r in recs]
        assert max(gaps) > 1e-3


def test_norm_statistic_needs_readable_projections(tiny_bert, monkeypatch):
    import attnviz.analyses.norms as norms

    def unreadable(loaded):
        raise InputError(f"cannot read the attention output projection of {loaded.name}")

    monkeypatch.setattr(norms, "output_projections", unreadable)
    with pytest.raises(InputError, match="cannot read the attention output projection"):
        list(iter_records(["the cat sat"], make_config(statistics="norm", plots=False), model=tiny_bert))
