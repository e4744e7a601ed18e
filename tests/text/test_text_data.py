"""Text data (shared/text.py) as the language blocks use it: splits by document, never a document in two."""

from dblocks.shared.text import STDLIB_LICENSE, TokenStream, load_text, stdlib_corpus


def _names(corpus):
    return [{d.name for d in corpus.split(s)} for s in ("train", "val", "test")]


def test_stdlib_corpus_is_split_by_document():
    corpus = stdlib_corpus()
    train, val, test = _names(corpus)
    assert train and val and test
    assert not (train & val or train & test or val & test)
    assert corpus.num_bytes > 5_000_000 and corpus.license == STDLIB_LICENSE
    assert stdlib_corpus().digest == corpus.digest  # the split is fixed


def test_user_text_split_by_document(tmp_path):
    folder = tmp_path / "tickets"
    for i in range(40):
        (folder / f"team{i % 3}").mkdir(parents=True, exist_ok=True)
        (folder / f"team{i % 3}" / f"t{i}.txt").write_text(f"ticket {i}: printer on floor {i % 5} is down\n")
    corpus = load_text(folder)
    train, val, test = _names(corpus)
    assert len(train) + len(val) + len(test) == 40 and not (train & val or train & test or val & test)
    assert {d.source for d in corpus.train} <= {"team0", "team1", "team2"}

    one = tmp_path / "notes.txt"
    text = "".join(f"line {i} of the notes, with some words\n" for i in range(2000))
    one.write_text(text)
    corpus = load_text(one)
    train, val, test = _names(corpus)
    assert val and test and not (train & val or train & test or val & test)
    docs = sorted(corpus.train + corpus.val + corpus.test, key=lambda d: int(d.name.split("#")[1]))
    assert b"".join(d.data for d in docs) == text.encode()  # the chunks are the file, each once
    windows = TokenStream(corpus.test).windows(64, 4)
    assert windows.shape[1] == 64 and windows.shape[0] <= 4


def test_a_file_of_one_long_line_is_cut_at_spaces_and_character_boundaries(tmp_path):
    words = "".join(f"wörd{i} " for i in range(6000))  # ~50 KB, no line break, 2-byte characters
    spaced = tmp_path / "one_line.txt"
    spaced.write_text(words)
    dense = tmp_path / "no_spaces.txt"
    dense.write_text("é" * 20000)  # 40 KB of 2-byte characters, no space, no line break
    for path, text in ((spaced, words), (dense, "é" * 20000)):
        corpus = load_text(path)
        docs = sorted(corpus.train + corpus.val + corpus.test, key=lambda d: int(d.name.split("#")[1]))
        assert len(docs) >= 3 and corpus.val and corpus.test
        assert b"".join(d.data for d in docs) == text.encode()
        for d in docs:
            d.data.decode("utf-8")  # no character cut in two
    spaced_corpus = load_text(spaced)
    assert all(d.data.endswith(b" ") for d in spaced_corpus.train + spaced_corpus.val + spaced_corpus.test)
