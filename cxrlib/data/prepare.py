"""Building the sample cache in parallel before training (``cxrlib prepare``, the first pass of a stage).

Decoding is the slow part of the data path: a 3000x2500 JPEG 2000 radiograph takes about 2 s of
one core, so the first pass over EGD-CXR's 1,083 images would cost more than half an hour in one
process. :func:`prepare_cache` hands the samples that the cache lacks to N worker processes,
each decoding, building the gaze map, resampling and writing its entries, with a progress bar.

The cache is the record of progress: every entry is written atomically under a key that names
its inputs, so a build that is killed keeps every entry already written, and the next call
(``cxrlib prepare`` again, or the next stage) builds only the rest. Temporary files of a killed
writer are removed at the start.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

from cxrlib.progress import progress_counter

_DATASETS: list = []  # the data sets of a worker process (set by its initialiser)


def available_cpus() -> int:
    """CPU cores this process may use (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers() -> int:
    """Worker processes for decoding: one per available core, at most 8 (Colab has 2)."""
    return max(1, min(8, available_cpus()))


def _init_worker(datasets) -> None:
    import torch

    torch.set_num_threads(1)  # one process per core: intra-op threads would only oversubscribe
    _DATASETS[:] = datasets
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A worker whose build was killed (kill -9 leaves it waiting on its queue forever) exits."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _build(which: int, index: int) -> float:
    """Compute and cache one sample in a worker; return the CPU seconds it took."""
    started = time.process_time()
    _DATASETS[which].load(index)
    return time.process_time() - started


def prepare_cache(datasets, *, workers: int | None = None, progress: bool = True,
                  desc: str = "sample cache") -> dict:
    """Make sure every sample of ``datasets`` (EGDDataset objects sharing or not a cache) is cached.

    ``workers``: processes that decode (None: :func:`default_workers`; 0: in this process).
    Returns counts and timing: ``images``, ``cached_before`` (entries kept from an earlier,
    possibly interrupted build), ``built``, ``seconds``, ``samples_per_s`` (of the built ones),
    ``cpu_seconds`` (of the decoding processes) and ``cores_used`` (CPU over wall seconds).
    """
    datasets = [d for d in datasets if d.cache.root is not None]
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise ValueError(f"parameter 'workers' must be 0 (this process) or more, got {workers}")
    for cache in {d.cache.root: d.cache for d in datasets}.values():
        cache.remove_orphans()
    seen, todo = set(), []
    for which, dataset in enumerate(datasets):
        for index in range(len(dataset)):
            key = dataset.key(index)
            if key not in seen and not dataset.cache.has(key):
                todo.append((which, index))
            seen.add(key)
    result = {"images": len(seen), "cached_before": len(seen) - len(todo), "built": len(todo),
              "workers": workers, "seconds": 0.0, "samples_per_s": float("nan")}
    if not todo:
        return result
    bar = progress_counter(total=len(todo), desc=f"{desc} ({workers or 'no'} worker{'s' if workers != 1 else ''})",
                           enabled=progress)
    started = time.perf_counter()
    cpu = 0.0
    if workers == 0:
        for which, index in todo:
            cpu -= time.process_time()
            datasets[which].load(index)
            cpu += time.process_time()
            bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), initializer=_init_worker,
                                 initargs=(datasets,)) as pool:
            futures = [pool.submit(_build, which, index) for which, index in todo]
            try:
                for future in as_completed(futures):
                    cpu += future.result()  # a worker's error (e.g. an undecodable file) is raised here
                    bar.update(1)
            except BaseException:  # Ctrl-C or an error: stop handing out work; entries written stay
                for future in futures:
                    future.cancel()
                raise
    bar.close()
    result["seconds"] = time.perf_counter() - started
    result["samples_per_s"] = len(todo) / result["seconds"]
    # CPU seconds of the decoding over wall seconds: how many cores the build really got (on a
    # machine shared with other work, fewer than the workers)
    result["cpu_seconds"], result["cores_used"] = cpu, cpu / result["seconds"]
    return result
