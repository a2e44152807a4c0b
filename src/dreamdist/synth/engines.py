"""Engines: who renders which blocks. Both hand rows and PNGs to the same writer, so they make the
same files.

- ``local``: this process renders its share of the blocks (block j -> process j % WORLD_SIZE, with
  RANK / WORLD_SIZE as set by torchrun or accelerate launch) and writes them as they come.
- ``ray``: Ray Data fans the missing blocks out to an actor pool (``map_batches``, one
  ``BlockRenderer`` per actor, loaded once); this process streams the results to disk. Only the
  driver writes, so the cluster needs no shared file system.
"""

from __future__ import annotations

import logging
import signal

from tqdm.auto import tqdm

from dreamdist.synth.config import SynthConfig
from dreamdist.synth.plan import Plan, process_rank
from dreamdist.synth.store import SynthFolder


def _todo(plan: Plan, blocks: list[list[int]], done: dict) -> list[list[int]]:
    """Blocks with a missing image; they are rendered whole (the same batch as an uninterrupted run)."""
    return [block for block in blocks if any(_key(plan, k) not in done for k in block)]


def _key(plan: Plan, k: int) -> tuple[str, int]:
    position, index = plan.item(k)
    return plan.classes[position].folder, index


def _bar(config: SynthConfig, total: int, done: int, desc: str) -> tqdm:
    """Images done / total with images/s and ETA."""
    return tqdm(total=total, initial=done, disable=not config.progress, desc=desc, unit="img", smoothing=0.1)


def run_local(config: SynthConfig, plan: Plan, folder: SynthFolder) -> int:
    """Render this process's missing blocks; return how many images it wrote."""
    from dreamdist.synth.worker import BlockRenderer

    rank, world = process_rank()
    mine = plan.blocks(rank, world)
    done = folder.done()
    todo = _todo(plan, mine, done)
    if not todo:
        return 0
    total = sum(len(block) for block in mine)
    missing = sum(_key(plan, k) not in done for block in todo for k in block)
    renderer = BlockRenderer(config, plan)
    made = 0
    desc = "synth" if world == 1 else f"synth {rank}/{world}"
    with folder.writer(rank) as writer, _bar(config, total, total - missing, desc) as bar:
        for block in todo:
            for row, png in renderer.render(block):
                if (row["class"], row["index"]) in done:
                    continue  # written before the interruption; its block is re-rendered for identical bits
                writer.write(row, png)
                made += 1
                bar.update(1)
    return made


class RayRenderer:
    """The Ray Data callable: a ``BlockRenderer`` per actor; a batch of block numbers -> rows and PNGs."""

    def __init__(self, config: SynthConfig, plan: Plan):
        from dreamdist.synth.worker import BlockRenderer

        self.plan, self.renderer = plan, BlockRenderer(config, plan)
        self.blocks = plan.blocks()

    def __call__(self, batch: dict) -> dict:
        import json

        rows, pngs = [], []
        for j in batch["block"]:
            for row, png in self.renderer.render(self.blocks[int(j)]):
                rows.append(json.dumps(row))
                pngs.append(png)
        return {"row": rows, "png": pngs}


def _ray_resources(config: SynthConfig) -> tuple[int, float]:
    """(actors, GPUs per actor): one actor per GPU of the cluster, else ``--ray-workers`` CPU actors."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if config.device == "cpu" or gpus == 0:
        return config.ray_workers or 1, 0
    return config.ray_workers or gpus, 1


def run_ray(config: SynthConfig, plan: Plan, folder: SynthFolder) -> int:
    """Render every missing block on a Ray cluster; this process writes the results as they stream in."""
    import json

    try:
        import ray
    except ImportError:
        raise ImportError("--engine ray needs Ray: pip install 'dreamdist[ray]'") from None
    if not logging.getLogger().isEnabledFor(logging.INFO):  # our bar shows the progress; -v shows Ray's
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ray.data.DataContext.get_current().enable_progress_bars = False
    if not ray.is_initialized():
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        ray.init(address=config.ray_address, log_to_driver=False)
        for sig, handler in handlers.items():  # Ray replaces them; Ctrl-C / SIGTERM stay ours
            signal.signal(sig, handler)
    blocks = plan.blocks()
    done = folder.done()
    todo = {tuple(block) for block in _todo(plan, blocks, done)}
    ids = [j for j, block in enumerate(blocks) if tuple(block) in todo]
    if not ids:
        return 0
    actors, gpus = _ray_resources(config)
    dataset = ray.data.from_items([{"block": j} for j in ids], override_num_blocks=len(ids)).map_batches(
        RayRenderer,
        fn_constructor_args=(config, plan),
        batch_size=1,
        concurrency=actors,
        num_gpus=gpus,
        num_cpus=0 if gpus else 1,
    )
    missing = sum(_key(plan, k) not in done for j in ids for k in blocks[j])
    made = 0
    with folder.writer(0) as writer, _bar(config, plan.total, plan.total - missing, "synth (ray)") as bar:
        try:
            for item in dataset.iter_rows():
                row = json.loads(item["row"])
                if (row["class"], row["index"]) in done:
                    continue
                writer.write(row, item["png"])
                made += 1
                bar.update(1)
        except ray.exceptions.RayError as exc:  # bad input seen by a worker: one line, as in the local engine
            cause = _cause(exc)
            if isinstance(cause, (ValueError, OSError)):
                raise type(cause)(f"a Ray worker failed: {cause}") from exc
            raise
    return made


def _cause(exc: BaseException) -> BaseException:
    """The innermost exception a Ray error wraps (task or actor constructor)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__
        if inner is None:
            break
        exc = inner
    return exc
