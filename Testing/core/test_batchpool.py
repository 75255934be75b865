"""Batches prepared ahead in worker processes: the same batches, in order, across epoch ends."""

import numpy as np

from kneeseg.batchpool import BatchPool


class EpochSource:
    """A picklable batch source whose batches say which epoch and index made them."""

    def __init__(self, steps=3):
        self.steps, self.epoch = steps, 0

    def __len__(self):
        return self.steps

    def batch(self, index):
        return np.array([self.epoch, index]), np.full(2, self.epoch * 100 + index)


def test_pool_serves_the_batches_the_source_makes_across_epochs():
    direct = EpochSource()
    with BatchPool({"train": EpochSource(), "validation": EpochSource(steps=1)}, processes=2) as pool:
        train, validation = pool.view("train"), pool.view("validation")
        assert len(train) == 3 and len(validation) == 1
        for epoch in range(2):
            direct.epoch = epoch
            for index in range(3):
                x, y = train.batch(index)
                np.testing.assert_array_equal(x, direct.batch(index)[0])
                np.testing.assert_array_equal(y, direct.batch(index)[1])
            assert validation.batch(0)[0].tolist() == [epoch, 0]
            train.on_epoch_end()
            validation.on_epoch_end()
        assert all(key[0] >= 2 for key in train.pending)  # batches of finished epochs are not kept
