"""Reads a stage directory's TensorBoard event file with TensorBoard's own reader and prints, as
JSON, its scalars ({tag: [[step, value], ...]}) and texts ({tag: [[step, text], ...]}).

Usage: read_tensorboard.py STAGE_DIR
"""

import json
import math
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

accumulator = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "tensors": 0})
accumulator.Reload()
tags = accumulator.Tags()
# JSON has no NaN: a non-finite value is null, as in metrics.jsonl.
scalars = {
    tag: [[event.step, event.value if math.isfinite(event.value) else None] for event in accumulator.Scalars(tag)]
    for tag in tags["scalars"]
}
texts = {}
for tag in tags["tensors"]:
    texts[tag] = []
    for event in accumulator.Tensors(tag):
        value = tensor_util.make_ndarray(event.tensor_proto)
        texts[tag].append([event.step, value.item().decode("utf-8")])
json.dump({"scalars": scalars, "texts": texts}, sys.stdout)
