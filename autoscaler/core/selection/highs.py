"""The HiGHS binding: minimise a linear objective over sparse rows and bounds, as an LP or an integer program.

Through the HiGHS binding that SciPy ships (private to SciPy), with ``scipy.optimize.milp`` — the same
solver, slower per call, without duals — as the fallback when that binding is missing or has changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array

# Branch-and-bound nodes per exact solve: a deterministic bound on the work (the best plan found so far
# is used when it is reached); the small problems solved exactly need a handful.
_NODE_LIMIT = 20000
# HiGHS options for the exact integer program that change how fast it is found, not what is found (zero
# gap either way): the feasibility-jump heuristic costs more than it finds on programs whose root LP nearly
# solves them, as here. Set only where this HiGHS has the option.
_MIP_SPEED_OPTIONS: dict[str, bool] = {"mip_heuristic_run_feasibility_jump": False}
# A safety net, not a tuning knob: a limit that is hit would make the answer depend on machine speed, so
# it is far above anything seen (the node limit above binds first).
_TIME_LIMIT_S = 10.0


def _load_highs() -> Any:
    """HiGHS's own Python binding as SciPy ships it (SciPy >= 1.15), or None.

    ``scipy.optimize.milp`` wraps the same solver, but its per-call work in Python (option checks, a
    Python object per variable for the integrality, dual values gathered column by column) costs as much
    as solving the relaxation of a large program. The ``highspy`` package is the public form of this
    binding, but it brings its own HiGHS release, and the planner's answers (and speed) depend on the
    release: this one is the release SciPy was built and tested with. Private to SciPy, hence the fallback
    to ``milp`` when it is missing or has changed.
    """
    try:
        from scipy.optimize._highspy import _core
    except ImportError:  # pragma: no cover - depends on the SciPy version
        return None
    needed = ("_Highs", "HighsLp", "HighsModelStatus", "HighsStatus", "HighsVarType", "MatrixFormat")
    if not all(hasattr(_core, name) for name in needed):  # pragma: no cover - depends on the SciPy version
        return None
    return _core


_HIGHS: Any = _load_highs()


@dataclass(frozen=True, slots=True)
class Rows:
    """Constraint rows in compressed sparse row form: lower <= A x <= upper."""

    start: np.ndarray
    index: np.ndarray
    value: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    def plus(self, index: np.ndarray, value: np.ndarray, lower: float, upper: float) -> Rows:
        """These rows and one more."""
        return Rows(
            start=np.append(self.start, self.start[-1] + index.size).astype(np.int32),
            index=np.concatenate([self.index, index]).astype(np.int32),
            value=np.concatenate([self.value, value]),
            lower=np.append(self.lower, lower),
            upper=np.append(self.upper, upper),
        )


def run_highs(
    objective: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    rows: Rows,
    integrality: np.ndarray | None,
    *,
    presolve: bool,
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Minimise ``objective · x`` over the rows and bounds (an LP when ``integrality`` is None): the
    solution and, for an LP, the rows' dual values (None when unavailable); None when there is no solution
    (or, for an integer program, none was found within the limits)."""
    options: dict[str, float | int | str] = {
        "time_limit": _TIME_LIMIT_S,
        "presolve": "on" if presolve else "off",
    }
    if integrality is not None:
        options |= {"mip_max_nodes": _NODE_LIMIT, "mip_rel_gap": 0.0}
    # Options that only make the search faster, set where this HiGHS has them (see _MIP_SPEED_OPTIONS).
    optional = _MIP_SPEED_OPTIONS if integrality is not None else {}
    core = _HIGHS
    if core is None:  # pragma: no cover - depends on the SciPy version
        return _run_milp(objective, lower, upper, rows, integrality, presolve=presolve)
    n_cols, n_rows = objective.size, rows.lower.size
    lp = core.HighsLp()
    lp.num_col_ = n_cols
    lp.num_row_ = n_rows
    lp.col_cost_ = objective
    lp.col_lower_ = lower
    lp.col_upper_ = upper
    lp.row_lower_ = rows.lower
    lp.row_upper_ = rows.upper
    matrix = lp.a_matrix_
    matrix.format_ = core.MatrixFormat.kRowwise
    matrix.num_col_ = n_cols
    matrix.num_row_ = n_rows
    matrix.start_ = rows.start
    matrix.index_ = rows.index
    matrix.value_ = rows.value
    if integrality is not None:
        lp.integrality_ = [core.HighsVarType(int(v)) for v in integrality]
    highs = core._Highs()
    ok = core.HighsStatus.kOk
    if highs.setOptionValue("output_flag", False) != ok:  # pragma: no cover - depends on the SciPy version
        return _run_milp(objective, lower, upper, rows, integrality, presolve=presolve)
    for name, value in options.items():
        if highs.setOptionValue(name, value) != ok:  # pragma: no cover - depends on the SciPy version
            return _run_milp(objective, lower, upper, rows, integrality, presolve=presolve)
    for name, value in optional.items():
        highs.setOptionValue(name, value)
    error = core.HighsStatus.kError
    if highs.passModel(lp) == error or highs.run() == error:
        return None
    model = core.HighsModelStatus
    status = highs.getModelStatus()
    if status != model.kOptimal:
        # As milp: an integer program stopped by a limit still has its best plan, if it found one.
        stopped = (model.kTimeLimit, model.kIterationLimit, model.kSolutionLimit)
        if integrality is None or status not in stopped:
            return None
        if not math.isfinite(highs.getInfo().objective_function_value):
            return None
    solution = highs.getSolution()
    x = np.asarray(solution.col_value, dtype=float)
    if integrality is not None or not getattr(solution, "dual_valid", False):
        return x, None
    return x, np.asarray(solution.row_dual, dtype=float)


def _run_milp(
    objective: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    rows: Rows,
    integrality: np.ndarray | None,
    *,
    presolve: bool,
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``run_highs`` through SciPy's public ``milp`` (slower per call; same solver and options; no duals)."""
    n_cols, n_rows = objective.size, rows.lower.size
    constraints = []
    if n_rows:
        matrix = csr_array((rows.value, rows.index, rows.start), shape=(n_rows, n_cols))
        constraints.append(LinearConstraint(matrix, rows.lower, rows.upper))
    options: dict[str, float | int | bool] = {"time_limit": _TIME_LIMIT_S, "presolve": presolve}
    if integrality is not None:
        options |= {"node_limit": _NODE_LIMIT, "mip_rel_gap": 0.0}
    res = milp(
        objective,
        integrality=np.zeros(n_cols) if integrality is None else integrality,
        bounds=Bounds(lower, upper),
        constraints=constraints,
        options=options,
    )
    if res.x is None:
        return None
    return np.asarray(res.x, dtype=float), None
