"""Worker: rank 1 alone computes a NaN loss; every rank must skip that step and keep its weights.

usage: nonfinite.py CONFIG_JSON   (prints one JSON line per rank)
"""

import json
import sys

import torch

from shoal.config import config_from_dict
from shoal.data.prepare import prepare_dataset
from shoal.parallel.group import destroy_process_group
from shoal.train.trainer import Trainer

cfg = config_from_dict(json.loads(open(sys.argv[1]).read()))
data = prepare_dataset(cfg.data, progress=False)
trainer = Trainer(cfg, data.windows("train", cfg.train.seq_len), None, data.manifest["vocab_size"], data.fingerprint)
rank = trainer.process.rank
trainer.train_step()
weights = trainer.model.layers[0].feed_forward.w1.weight  # data parallel: each rank holds a whole replica
if rank == 1:
    with torch.no_grad():
        weights.to_local()[0, 0] = float("nan")
before = {k: v.to_local().clone() for k, v in trainer.model.state_dict().items()}
result = trainer.train_step()
after = trainer.model.state_dict()
unchanged = all(torch.equal(before[k].nan_to_num(), v.to_local().nan_to_num()) for k, v in after.items())
print(json.dumps({"rank": rank, "skipped": result.skipped, "loss": repr(result.loss), "unchanged": unchanged,
                  "step": trainer.step, "bad_steps": trainer.bad_steps}))
del trainer  # freed before the group goes (see destroy_process_group)
destroy_process_group()
