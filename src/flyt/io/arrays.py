"""Arrow <-> numpy for the column kinds flyt files hold, with validation that names the place."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from flyt.errors import FlytError


def embedding_matrix(table: pa.Table, column: str, where: str, dim: int | None = None) -> np.ndarray:
    """A list / fixed-size-list column -> (rows, dim) float32 matrix, validated.

    Rejects a missing column, rows of unequal length, a dimension other than ``dim``, NaN/inf.
    """
    if column not in table.column_names:
        raise FlytError(f"{where}: missing column '{column}' (have: {', '.join(table.column_names)})")
    col = table.column(column).combine_chunks() if table.num_rows else table.column(column)
    n = table.num_rows
    if n == 0:
        return np.zeros((0, dim or 0), dtype=np.float32)
    typ = col.type
    if pa.types.is_fixed_size_list(typ):
        width = typ.list_size
    elif pa.types.is_list(typ) or pa.types.is_large_list(typ):
        lengths = np.diff(col.offsets.to_numpy())
        width = int(lengths[0])
        uneven = np.flatnonzero(lengths != width)
        if uneven.size:
            r = int(uneven[0])
            raise FlytError(
                f"{where}: column '{column}' row {r} has dimension {int(lengths[r])}, row 0 has {width}"
            )
    else:
        raise FlytError(f"{where}: column '{column}' must be a list of floats, found {typ}")
    if col.null_count:
        r = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise FlytError(f"{where}: column '{column}' row {r} is null")
    if dim is not None and width != dim:
        raise FlytError(f"{where}: column '{column}' has dimension {width}, expected {dim}")
    values = col.flatten()
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise FlytError(f"{where}: column '{column}' must hold floats, found {values.type}")
    matrix = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, width)
    check_finite(matrix, where, column)
    return matrix


def float_column(table: pa.Table, column: str, where: str) -> np.ndarray:
    """A numeric (or boolean: 0/1) column -> float64 vector, validated (present, no nulls, finite)."""
    if column not in table.column_names:
        raise FlytError(f"{where}: missing column '{column}' (have: {', '.join(table.column_names)})")
    col = table.column(column)
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_boolean(col.type)):
        raise FlytError(f"{where}: column '{column}' must be numeric, found {col.type}")
    if col.null_count:
        r = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise FlytError(f"{where}: column '{column}' row {r} is null")
    values = col.to_numpy().astype(np.float64, copy=False)
    check_finite(values, where, column)
    return values


def check_finite(values: np.ndarray, where: str, column: str) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        raise FlytError(f"{where}: column '{column}' row {int(bad[0])} is not finite ({values[tuple(bad)]})")


def fixed_size_list(matrix: np.ndarray, dtype=pa.float32()) -> pa.FixedSizeListArray:
    """(rows, dim) matrix -> Arrow fixed-size-list column (the layout flyt writes)."""
    matrix = np.ascontiguousarray(matrix)
    flat = pa.array(matrix.reshape(-1), type=dtype)
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32 (the one normaliser: pools, tasks, encoders, npz).

    A zero row stays zero (its norm is floored at 1e-12) instead of becoming NaN.
    """
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
