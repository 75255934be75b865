"""Cohorts on a Dask distributed cluster: the same per-case function, spread over many machines.

``kneeseg segment cohort/ -o out/ --scheduler tcp://host:8786`` sends one task per case to the
cluster; each worker process loads the model bundle once and runs :func:`cohort.segment_case` on
the cases it receives, writing its outputs into the shared output folder. The client collects one
row per case (bone volumes or the error) for the summary CSV. Why Dask rather than Ray, and how to
start a cluster: docs/cohorts.md.

Input paths, the output folder and the model bundle must be visible to every worker under the same
paths (a shared file system), and the workers need kneeseg installed in the same version.
"""

import threading
from pathlib import Path

from .errors import OutputError

_CACHE = {}
_CACHE_LOCK = threading.Lock()


def _resources(model, backend):
    """The bundle and predictor of this worker process (loaded once, shared by its threads)."""
    key = (str(model) if model is not None else None, backend)
    with _CACHE_LOCK:
        if key not in _CACHE:
            from .bundle import load_bundle
            from .infer import make_predictor

            bundle = load_bundle(model)
            _CACHE[key] = (bundle, make_predictor(bundle, backend))
        return _CACHE[key]


def run_case(input_path, output_dir, model, options) -> tuple:
    """One case on a worker: :func:`cohort.segment_case` with this worker's cached model.

    Returns (row, staged): the outputs stay under temporary names in the shared output folder until
    the client has recorded the row and commits them (the label map, the case's done-marker, last).
    """
    from .cohort import case_name, segment_case

    try:
        bundle, predictor = _resources(model, options.backend)
    except Exception as exc:  # noqa: BLE001 - a worker that cannot load the model fails its cases, not the run
        return {"case": case_name(Path(input_path)), "input": str(input_path), "status": "failed",
                "error": f"worker could not load the model: {type(exc).__name__}: {exc}"}, None
    return segment_case(Path(input_path), Path(output_dir), model, options, bundle=bundle, predictor=predictor)


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


def map_cases(inputs, output_dir, model, options, scheduler, progress=None, on_case=None) -> list:
    """Segment ``inputs`` on a Dask cluster; one row dict per case, in input order.

    ``scheduler``: a scheduler address (``tcp://host:8786``), a ``distributed.Client`` or a cluster
    object. A case whose task is lost (a worker died twice on it) is recorded as failed; the others
    go on. As each case finishes, ``on_case(row, staged)`` records it and commits its staged outputs
    (default: commit only), then ``progress(stage, fraction, message)`` is called.
    """
    from distributed import as_completed

    inputs = [Path(p) for p in inputs]
    if not inputs:
        return []
    client, owned = connect(scheduler)
    output_dir = str(Path(output_dir).resolve())
    model = str(Path(model).resolve()) if model is not None else None
    try:
        futures = [client.submit(run_case, str(p.resolve()), output_dir, model, options, pure=False,
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
                from .cohort import case_name

                rows[n], staged = {"case": case_name(inputs[n]), "input": str(inputs[n]), "status": "failed",
                                   "error": f"cluster error: {type(exc).__name__}: {exc}"}, None
            if on_case is not None:
                on_case(rows[n], staged)
            elif staged is not None:
                staged.commit()
            if progress is not None:
                row = rows[n]
                progress("case", done / len(inputs), f"{done}/{len(inputs)} {row['case']}: {row['status']}")
        return rows
    finally:
        if owned:
            client.close()
