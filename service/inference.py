"""One inference, start to end, as both HTTP surfaces run it (``/v1/predict`` and the
Hugging Face Inference API routes): resolve the names, check the parameters, cut the inputs
into windows, run them in the composition, turn the outputs into the task's answers.

The CPU work on either side of the model (tokenizing, post-processing) runs in worker
threads, never on the event loop, so one heavy request does not stall the others' I/O.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from service.engine import Composition, Engine


@dataclass
class Inference:
    comp: Composition
    answers: list[Any]  # per input, the task's answer (the pipeline's shape)
    outputs: list[list[dict]]  # per input, per window, the model outputs kept (for return_logits)


async def infer(engine: Engine, language: str | None, task: str | None, inputs: list[Any],
                parameters: dict[str, Any] | None, names: list[str]) -> Inference:
    """Raises the engine's errors (UnknownPair, Unservable, RegistryDown), InputError naming
    the input or parameter, or asyncio.TimeoutError."""
    comp = await engine.resolve(language, task)
    params = comp.io.parse_params(parameters)
    prepared = await asyncio.to_thread(engine.prepare, comp, inputs, params, names)
    outputs = await engine.predict(comp, [p.windows for p in prepared])
    answers = await asyncio.to_thread(engine.postprocess, comp, prepared, outputs, params)
    return Inference(comp, answers, outputs)
