"""A callback that SIGKILLs its own process (test_resume.py: a real kill, at a chosen training step)."""
import os
import signal

from lightning.pytorch.callbacks import Callback


class KillAt(Callback):
    """Kill -9 the process when training batch ``step`` is about to run (``step`` steps done and checkpointed)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
