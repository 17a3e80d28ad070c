"""Small parquet helpers: fixed-size list columns in and out."""

from __future__ import annotations


import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _fixed_list(mat: np.ndarray) -> pa.Array:
    """(n, d) floats as fixed_size_list<float32>[d], what HF datasets writes for Sequence(length=d)."""
    mat = np.asarray(mat, dtype=np.float32)
    flat = pa.array(mat.reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, mat.shape[1])


def _matrix(column: pa.ChunkedArray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A list (or scalar) column as float32 (n, dim), plus each row's length (-1 for null rows).

    Rows whose length is not `dim` come back as NaN so the caller can name them.
    """
    col = column.combine_chunks()
    n = len(col)
    mat = np.full((n, dim), np.nan, dtype=np.float32)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        lengths = pc.list_value_length(col).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        ok = lengths == dim
        if ok.any():
            good = col if ok.all() else col.filter(pa.array(ok))
            values = good.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            mat[ok] = values.reshape(-1, dim)
        return mat, lengths
    lengths = np.where(col.is_null().to_numpy(zero_copy_only=False), -1, 1)
    if dim == 1:
        mat[:, 0] = pc.fill_null(col.cast(pa.float32()), np.nan).to_numpy(zero_copy_only=False)
    return mat, lengths
