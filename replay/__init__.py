"""tickwire.replay: history back through the engine the daemon runs.

- :mod:`tickwire.replay.sources`: the tick store (snapshots merged back where the live books met
  them), the real captures, numpy arrays and ``.npy`` files, streamed in one total order.
- :mod:`tickwire.replay.run`: :class:`Replay` (as fast as possible, paced, or step by step) and
  :class:`EngineSpec` (the engine a worker builds).
- :mod:`tickwire.replay.publish`: history republished over ZeroMQ in the wire format.
- ``tickwire replay`` (:mod:`tickwire.replay.cli`); docs/replay.md.
"""

from tickwire.replay.run import EngineSpec, Replay, ReplayInterrupted, ReplayResult, Step
from tickwire.replay.sources import ArraySource, CaptureSource, ReplayError, StoreSource, merge_snapshots

__all__ = ["EngineSpec", "Replay", "ReplayInterrupted", "ReplayResult", "Step", "ArraySource", "CaptureSource", "StoreSource",
           "ReplayError", "merge_snapshots"]
