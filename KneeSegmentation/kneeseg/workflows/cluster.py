"""Cohorts on a Dask distributed cluster: the same per-case function, spread over many machines.

``kneeseg segment cohort/ -o out/ --scheduler tcp://host:8786`` sends one task per case to the
cluster; each worker process loads the model bundle once and runs the per-case function
(:func:`kneeseg.workflows.case.segment_case`) on the cases it receives, staging its outputs in the
shared output folder. The client records one row per case (bone volumes or the error) and commits
the case's outputs. Why Dask rather than Ray, and how to start a cluster: docs/cohorts.md.

Input paths, the output folder and the model bundle must be visible to every worker under the same
paths (a shared file system), and the workers need kneeseg installed in the same version.
"""

import threading
from pathlib import Path

from ..errors import OutputError
from ..progress import NO_PROGRESS
from .case import failed_row

_CACHE = {}
_CACHE_LOCK = threading.Lock()


def _resources(model, backend):
    """The bundle and predictor of this worker process (loaded once, shared by its threads)."""
    key = (str(model) if model is not None else None, backend)
    with _CACHE_LOCK:
        if key not in _CACHE:
            from ..bundle import load_bundle
            from ..infer import make_predictor

            bundle = load_bundle(model)
            _CACHE[key] = (bundle, make_predictor(bundle, backend))
        return _CACHE[key]


def run_case(case_fn, input_path, model, backend) -> tuple:
    """On a worker: ``case_fn(input_path, bundle=, predictor=)`` with this worker's cached model.

    Returns (row, staged): the outputs stay under temporary names in the shared output folder until
    the client has recorded the row and commits them (the label map, the case's done-marker, last).
    """
    try:
        bundle, predictor = _resources(model, backend)
    except Exception as exc:  # noqa: BLE001 - a worker that cannot load the model fails its cases, not the run
        return failed_row(input_path, f"worker could not load the model: {type(exc).__name__}: {exc}"), None
    return case_fn(Path(input_path), bundle=bundle, predictor=predictor)


def connect(scheduler):
    """A ``distributed.Client`` for ``scheduler``: an address string, a Client, or a Cluster object.

    Returns (client, owned): ``owned`` is True when this function created the client (close it).
    """
    try:
        from distributed import Client
    except ImportError:
        raise ImportError("cohorts on a cluster need Dask distributed: pip install 'dask[distributed]' "
                          "(or pip install 'kneeseg[cluster]')") from None
    if isinstance(scheduler, Client):
        return scheduler, False
    if hasattr(scheduler, "scheduler_address"):  # a LocalCluster, SLURMCluster, KubeCluster, ...
        return Client(scheduler), True
    return Client(str(scheduler), timeout="30s"), True


def map_cases(case_fn, inputs, on_case, scheduler, model=None, backend="auto", progress=None) -> list:
    """Run ``case_fn`` on every input on a Dask cluster; one row dict per case, in input order.

    ``case_fn(input_path, bundle=, predictor=)`` -> (row, staged) must be picklable (a module-level
    function or a ``functools.partial`` of one, with absolute paths). ``scheduler``: an address
    (``tcp://host:8786``), a ``distributed.Client`` or a cluster object; ``model``/``backend``: what
    each worker loads once. A case whose task is lost (a worker died twice on it) is recorded as
    failed; the others go on. As each case finishes, ``on_case(row, staged)`` records it and commits
    its staged outputs, then ``progress(stage, fraction, message)`` is called.
    """
    from distributed import as_completed

    progress = progress or NO_PROGRESS
    inputs = [Path(p) for p in inputs]
    if not inputs:
        return []
    client, owned = connect(scheduler)
    model = str(Path(model).resolve()) if model is not None else None
    try:
        futures = [client.submit(run_case, case_fn, str(p.resolve()), model, backend, pure=False,
                                 key=f"kneeseg-case-{n}-{p.name}") for n, p in enumerate(inputs)]
        index = {f.key: n for n, f in enumerate(futures)}
        rows = [None] * len(inputs)
        for done, future in enumerate(as_completed(futures), start=1):
            n = index[future.key]
            try:
                rows[n], staged = future.result()
            except OutputError:
                raise  # a full disk or an unwritable folder fails every case: stop
            except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: record, keep going
                rows[n], staged = failed_row(inputs[n], f"cluster error: {type(exc).__name__}: {exc}"), None
            on_case(rows[n], staged)
            progress("case", done / len(inputs), f"{done}/{len(inputs)} {rows[n]['case']}: {rows[n]['status']}")
        return rows
    finally:
        if owned:
            client.close()
