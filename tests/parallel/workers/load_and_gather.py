"""Worker: load a checkpoint under this torchrun's layout, then write the full (gathered) weights and the loss of
the second step after it from rank 0.

usage: load_and_gather.py RUN_DIR CHECKPOINT OUT.safetensors [section.key=value ...]
"""

import json
import sys
from pathlib import Path

from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from shoal.config import config_from_dict
from shoal.data.prepare import prepare_dataset
from shoal.parallel.group import destroy_process_group, process_info
from shoal.train.checkpoint import CheckpointManager
from shoal.train.trainer import Trainer

run_dir, checkpoint, out = (Path(a) for a in sys.argv[1:4])
saved = json.loads((run_dir / "config.json").read_text())
for text in sys.argv[4:]:  # section.key=JSON value
    key, value = text.split("=", 1)
    section, name = key.split(".")
    saved[section][name] = json.loads(value)
cfg = config_from_dict(saved)
data = prepare_dataset(cfg.data, progress=False)
trainer = Trainer(cfg, data.windows("train", cfg.train.seq_len), None, data.manifest["vocab_size"], data.fingerprint)
trainer.load_state_dict(CheckpointManager(run_dir / "checkpoints").load(checkpoint, like=trainer.state_dict()))
weights = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
trainer.train_step()
loss = trainer.train_step().loss  # step 6: its weights come from an update that used the loaded Adam moments
if process_info().is_main:
    tied = trainer.cfg.model.tie_embeddings
    save_file({k: v.contiguous() for k, v in weights.items() if not (tied and k == "output.weight")}, out,
              metadata={"next_loss": repr(loss), "step": str(trainer.step), "layout": trainer.layout.describe()})
del trainer  # freed before the group goes (see destroy_process_group)
destroy_process_group()
