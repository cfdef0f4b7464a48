"""lm-evaluation-harness adapter: a shoal run or bundle as an lm_eval model named "shoal".

Python:   import shoal.eval.lm_harness; lm_eval.simple_evaluate(model="shoal", model_args="pretrained=runs/tiny", ...)
Command:  python -m shoal.eval.lm_harness --model shoal --model_args pretrained=runs/tiny --tasks ...
          (lm_eval's own command line, with the "shoal" model registered first; every lm_eval option works)

Log-likelihoods are computed like the harness's Hugging Face model: the context and the continuation are encoded
together, the continuation's tokens are scored in one forward pass (the context cut on the left to fit the model's
window), and rolling log-likelihoods use the harness's own disjoint windows. Generation uses shoal's KV-cache
sampler, greedy unless the task asks to sample.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from shoal.bundle import load_model
from shoal.data.tokenizer import eot_id
from shoal.serve.generate import generate


@register_model("shoal")
class ShoalLM(TemplateLM):
    def __init__(self, pretrained: str, device: str | None = None, batch_size: int | str = 8, max_gen_toks: int = 256,
                 **_: Any) -> None:
        super().__init__()
        if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            # lm_eval's command line asks for cuda by default; without a GPU use the CPU, as its HF model does.
            if device is not None:
                logging.getLogger(__name__).warning("device %s is not available; using the CPU", device)
            device = "cuda" if torch.cuda.is_available() else "cpu"
        loaded = load_model(pretrained)
        self.model = loaded.model.to(device).eval()
        self.tokenizer = loaded.tokenizer
        self.max_length = self.model.config.max_seq_len
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8  # "auto" picks the default
        self.max_gen_toks = int(max_gen_toks)
        self._device = torch.device(device)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> ShoalLM:
        return cls.create_from_arg_obj(utils.simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> ShoalLM:
        """lm_eval's command line passes batch_size and device on their own as well: --model_args wins."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @property
    def eot_token_id(self) -> int:
        return eot_id(self.tokenizer)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return "shoal-bpe"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **_: Any) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=False).ids

    def tok_decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False,
                              **_: Any) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether greedy decoding would produce the continuation)."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        # Longest first, so each batch pads little and a too-long input fails at once rather than at the end.
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            rows, lengths = [], []
            for i in batch:
                _, context, continuation = requests[i]
                if len(continuation) > self.max_length:
                    raise ValueError(f"a continuation of {len(continuation)} tokens does not fit the model's context "
                                     f"of {self.max_length}")
                whole = (context + continuation)[-(self.max_length + 1):]  # keep the end: the continuation matters
                rows.append(whole[:-1])
                lengths.append(len(continuation))
            width = max(len(r) for r in rows)
            tokens = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=self.device)
            log_probs = F.log_softmax(self.model(tokens).float(), dim=-1)
            for row, i, n_cont, n_in in zip(log_probs, batch, lengths, (len(r) for r in rows)):
                target = torch.tensor(requests[i][2][-n_cont:], device=self.device)
                scores = row[n_in - n_cont:n_in]  # right padding: the real positions come first
                greedy = bool((scores.argmax(dim=-1) == target).all())
                results[i] = (float(scores.gather(1, target[:, None]).sum()), greedy)
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        totals = []
        for request in requests:
            (text,) = request.args
            windows = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1)]
            scored = self._loglikelihood_tokens([(None, context, continuation) for context, continuation in windows])
            totals.append(sum(log_prob for log_prob, _ in scored))
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        outputs = []
        for request in requests:
            context, settings = request.args
            settings = dict(settings or {})
            until = settings.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(settings.get("max_gen_toks", self.max_gen_toks))
            # Hugging Face's convention: do_sample decides (when unset: a temperature above 0 means sampling), and
            # sampling without a temperature uses 1.
            temperature = float(settings.get("temperature", 0.0))
            sample = settings.get("do_sample")
            sample = temperature > 0 if sample is None else bool(sample)
            temperature = (temperature if "temperature" in settings else 1.0) if sample else 0.0
            prompt = self.tok_encode(context)[-max(1, self.max_length - max_new):] or [self.eot_token_id]
            new: list[int] = []
            text = ""
            for token in generate(self.model, prompt, max_new, temperature=temperature, stop_token=self.eot_token_id,
                                  seed=int(settings.get("seed", 0))):
                new.append(token)
                text = self.tok_decode(new)
                if any(stop in text for stop in until):
                    break
            for stop in until:
                text = text.split(stop)[0]
            outputs.append(text)
        return outputs


def main() -> None:
    """lm_eval's command line with the "shoal" model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
