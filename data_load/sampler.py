"""Batches of similar length for the native trainer, sharded across processes."""
import numpy as np

from utils.errors import UserError


class LengthGroupedBatchSampler:
    """Yields lists of indices. Each epoch: shuffle, cut into chunks of `chunk_batches` batches,
    sort each chunk by length, cut into batches, shuffle the batches. Similar lengths share a batch
    (little padding) while the order stays random.

    With group_by_length=False: plain shuffled batches. Under data parallelism each process gets
    every world_size-th batch; batches are split until their count divides evenly, so every process
    takes the same number of steps and every sample is seen exactly once per epoch.

    Lengths are a NumPy array and batches NumPy slices, several times less memory than lists of Python
    ints on millions of rows (docs/benchmarks.md, "Figures behind the code")."""

    def __init__(self, lengths, batch_size, seed=0, group_by_length=True, shuffle=True,
                 chunk_batches=50, world_size=1, rank=0):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.shuffle = shuffle
        self.chunk_batches = chunk_batches
        self.world_size = world_size
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def all_batches(self):
        """This epoch's batches for every process, before sharding."""
        n = len(self.lengths)
        rng = np.random.default_rng([self.seed, self.epoch])
        indices = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.group_by_length:
            chunk = self.batch_size * self.chunk_batches
            indices = np.concatenate([part[np.argsort(-self.lengths[part], kind="stable")]
                                      for part in np.split(indices, range(chunk, n, chunk))]) if n else indices
        batches = np.split(indices, range(self.batch_size, n, self.batch_size)) if n else []
        if self.group_by_length and self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return _divisible(batches, self.world_size)

    def __iter__(self):
        return (batch.tolist() for batch in self.all_batches()[self.rank::self.world_size])

    def __len__(self):
        n_batches = -(-len(self.lengths) // self.batch_size)
        return -(-n_batches // self.world_size)


def _divisible(batches, world_size):
    """Split the largest batches in two until the count is a multiple of world_size."""
    while len(batches) % world_size:
        largest = max(range(len(batches)), key=lambda i: len(batches[i]))
        batch = batches[largest]
        if len(batch) < 2:
            raise UserError(f"too few training examples ({sum(map(len, batches))}) for {world_size} processes: "
                            "give more data (or a larger --max_train_samples), or run fewer processes")
        half = len(batch) // 2
        batches[largest:largest + 1] = [batch[:half], batch[half:]]
    return batches


class LengthGroupedSampler:
    """The same length-grouped order as a flat stream of indices, for transformers.Trainer (which cuts it
    into batches of `batch_size` itself). Replaces Trainer's own LengthGroupedSampler, whose Python
    lists of every index cost over half a gigabyte per process on 10 million rows.

    Each epoch's order is seeded from torch's global generator, as Trainer's sampler is: Trainer seeds
    it the same in every process (so they agree on the order) and restores it on --resume."""

    def __init__(self, lengths, batch_size, chunk_batches=50):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.chunk_batches = chunk_batches

    def __iter__(self):
        import torch
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        batches = LengthGroupedBatchSampler(self.lengths, self.batch_size, seed=seed,
                                            chunk_batches=self.chunk_batches).all_batches()
        # the one short batch goes last, so the batches Trainer cuts stay aligned with these
        batches.sort(key=lambda batch: len(batch) < self.batch_size)
        for batch in batches:
            yield from batch.tolist()

    def __len__(self):
        return len(self.lengths)
