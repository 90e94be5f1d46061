"""The closed loop end to end: the demo that runs every stage once, in one folder."""

from serve.loop.demo import LoopSettings, run_loop_demo

__all__ = ["LoopSettings", "run_loop_demo"]
