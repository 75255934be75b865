"""Batches prepared ahead of use in worker processes.

Synthesis and augmentation are CPU work in numpy/scipy, mostly holding the GIL, so threads do not
scale. Worker processes are started with ``spawn`` before any batch is asked for: unlike ``fork`` this
is safe beside a GPU runtime (JAX, CUDA) that the training process has already initialised.
"""

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

_SOURCES = {}


def _init_worker(sources):
    _SOURCES.update(sources)


def _make_batch(name, epoch, index):
    source = _SOURCES[name]
    if hasattr(source, "epoch"):
        source.epoch = epoch
    return source.batch(index)


class BatchPool:
    """A process pool serving several named, picklable batch sources (``__len__`` and ``batch(i)``)."""

    def __init__(self, sources: dict, processes: int):
        self.sources = sources
        self.executor = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init_worker, initargs=(sources,))
        self.prefetch = 2 * processes

    def view(self, name):
        return PrefetchingSource(self, name)

    def close(self):
        self.executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PrefetchingSource:
    """One source of a :class:`BatchPool`: asks for upcoming batches (across the epoch end) in advance."""

    def __init__(self, pool: BatchPool, name: str):
        self.pool, self.name = pool, name
        self.source = pool.sources[name]
        self.epoch = getattr(self.source, "epoch", 0)
        self.pending = {}

    def __len__(self):
        return len(self.source)

    def _submit(self, epoch, index):
        key = (epoch, index)
        if key not in self.pending:
            self.pending[key] = self.pool.executor.submit(_make_batch, self.name, epoch, index)

    def batch(self, index):
        n = len(self)
        for ahead in range(self.pool.prefetch):
            position = index + ahead
            self._submit(self.epoch + position // n, position % n)
        return self.pending.pop((self.epoch, index)).result()

    def on_epoch_end(self):
        self.epoch += 1
        for key in [k for k in self.pending if k[0] < self.epoch]:
            self.pending.pop(key).cancel()
