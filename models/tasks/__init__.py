"""The learning tasks. Every module of this package defines one task and is imported here, so its class
registers itself: ``make_task`` and ``task_class`` find any of them by name.
"""

from __future__ import annotations

import importlib
import pkgutil

from models.tasks.base import TASK_CLASSES, Prepared, Task, expect_task, make_task, task_class

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["TASK_CLASSES", "Prepared", "Task", "expect_task", "make_task", "task_class"]
