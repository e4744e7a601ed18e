"""#14 low: a CSV label like 1e10 or a NaN label in an NPZ gets a clear error, not a MemoryError or a class
named 'nan'."""

import contextlib
import resource

import numpy as np
import pytest

from dblocks.shared.data import DataError, load_dataset


@contextlib.contextmanager
def _memory_headroom(extra_bytes: int = 1 << 30):
    """Cap this process's address space at its current size + `extra_bytes` while loading, so that code which
    tries to build one class name per integer up to 1e10 fails fast with MemoryError instead of exhausting the
    machine. pandas' Arrow-backed strings reserve their memory pool's arenas on first use: that happens first,
    outside the cap (else the cap measures which test of the worker touched Arrow first, not the loader)."""
    import io

    import pandas as pd

    pd.read_csv(io.StringIO("a,b\n1,x\n"))
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = vm + extra_bytes if hard == resource.RLIM_INFINITY else min(hard, vm + extra_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _csv(tmp_path, labels):
    p = tmp_path / "labels.csv"
    p.write_text("a,diagnosis\n" + "".join(f"{i},{v}\n" for i, v in enumerate(labels)))
    return p, {"label_column": "diagnosis"}, "column 'diagnosis'"


def _npz(tmp_path, labels):
    p = tmp_path / "labels.npz"
    np.savez(p, x=np.zeros((len(labels), 3), np.float32), y=np.array(labels))
    return p, {}, "array 'y'"


CASES = [  # (writer, labels, 1-based row of the bad label, what is wrong, how the value is shown)
    (_csv, [0, 1, "1e10", 1], 3, "above the largest class index", "10000000000.0"),
    (_npz, [0.0, 1.0, float("nan")], 3, "not a finite number", "nan"),
    (_npz, [0.0, float("inf"), 1.0], 2, "not a finite number", "inf"),
    (_csv, [0, 0.5, 1], 2, "not a whole number", "0.5"),
    (_csv, [1, -1, 0], 2, "negative", "-1"),
    (_npz, [0, 2**40, 1], 2, "above the largest class index", str(2**40)),
]


@pytest.mark.parametrize(
    "write,labels,row,why,shown", CASES, ids=["csv-1e10", "npz-nan", "npz-inf", "csv-0.5", "csv-negative", "npz-2^40"]
)
def test_bad_labels_give_a_clear_data_error(tmp_path, write, labels, row, why, shown):
    """#14 low: huge, non-finite, negative and fractional numeric labels give one DataError naming the file, the
    label column (or NPZ array) and the first bad value. On main (checked): 1e10 and 2^40 tried to build one class
    name per index and died with MemoryError (under this test's address-space cap); NaN and inf became classes
    named 'nan'/'inf'; 0.5 became a class '0.5'; -1 gave an error that named neither the column nor the row."""
    path, kwargs, where = write(tmp_path, labels)
    with _memory_headroom(), pytest.raises(DataError) as e:
        load_dataset(path, **kwargs)
    msg = str(e.value)
    assert msg.startswith(f"{path}: {where} has 1 label(s) {why}") and f"(first: row {row}, value {shown})" in msg, msg
    # only the bad label is refused: with it replaced by a class index written as a float (2.0) the file loads
    fixed = [2.0 if i == row - 1 else float(v) for i, v in enumerate(labels)]
    path, kwargs, _ = write(tmp_path, fixed)
    assert load_dataset(path, **kwargs).y.tolist() == [int(v) for v in fixed]
