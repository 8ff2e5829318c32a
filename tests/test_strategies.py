"""The spawn-based DDP strategy leans on two private Lightning names; these tests fail loudly when they change."""

from __future__ import annotations

import inspect
import multiprocessing

from lightning_fabric.plugins.environments import LightningEnvironment
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.strategies.launchers import multiprocessing as lightning_mp

from motion_relevance.utils.strategies import DDPSpawnStrategy, DrainingQueue, _draining_queues


def test_lightning_still_joins_before_reading_the_result_queue() -> None:
    """The deadlock we work around: launch() makes ``context.SimpleQueue()``, joins the workers, then reads it.
    If a Lightning release changes this, revisit utils/strategies.py (the fix may no longer be needed or work)."""
    source = inspect.getsource(lightning_mp._MultiProcessingLauncher.launch)
    assert "context.SimpleQueue()" in source
    assert source.index("process_context.join()") < source.index("return_queue.get()")


def test_strategy_hook_and_launcher_are_ours() -> None:
    assert callable(getattr(DDPStrategy, "_configure_launcher", None))
    strategy = DDPSpawnStrategy(process_group_backend="gloo")
    strategy.cluster_environment = LightningEnvironment()
    strategy._configure_launcher()
    assert isinstance(strategy._launcher, lightning_mp._MultiProcessingLauncher)
    assert type(strategy._launcher).__name__ == "_DrainingLauncher"


def _send_large(queue) -> None:  # type: ignore[no-untyped-def]
    queue.put(b"x" * (1 << 20))  # 1 MiB: far more than a pipe holds


def test_draining_queue_never_blocks_a_large_sender() -> None:
    with _draining_queues("fork"):
        context = multiprocessing.get_context("fork")
        queue = context.SimpleQueue()
    assert isinstance(queue, DrainingQueue)
    assert not isinstance(context.SimpleQueue(), DrainingQueue)  # restored after the launch
    child = context.Process(target=_send_large, args=(queue,))
    child.start()
    child.join(timeout=60)  # a plain SimpleQueue would block the child here: nobody reads the pipe yet
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "the child blocked on a full pipe"
    assert queue.get() == b"x" * (1 << 20)
