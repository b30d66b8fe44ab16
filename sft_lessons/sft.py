"""DeepSpeed-Chat step 1 as a command, `python -m sft_lessons.sft`, with step 1's argument names (第 7 章, notebooks/07_deepspeed_chat_sft.ipynb).

One process:                 python -m sft_lessons.sft --zero_stage 2 ...
N processes on one machine:  torchrun --standalone --nproc_per_node N -m sft_lessons.sft ...   (CPU: gloo; GPU: NCCL)
                             deepspeed --num_gpus N --module sft_lessons.sft ...             (GPUs)
N nodes (GPUs):              deepspeed --hostfile hostfile --num_nodes N --module sft_lessons.sft ...
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import itertools
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data.distributed import DistributedSampler
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, default_data_collator, get_scheduler

from .data import IGNORE_INDEX
from .device import get_device, progress, quiet, set_seed, tell_deepspeed
from .dschat import (
    END_OF_CONVERSATION_TOKEN,
    PROMPT_FORMATS,
    atomic_write_text,
    check_data_path,
    create_prompt_dataset,
    end_of_conversation_ids,
    load_hf_tokenizer,
    parse_data_split,
    save_hf_format,
)
from .lora import convert_linear_layer_to_lora, convert_lora_to_linear_layer, only_optimize_lora_parameters
from .memory import count_parameters
from .models import quiet_from_pretrained, resolve, tiny_causal_lm, tiny_tokenizer
from .padding import LengthGroupedBatches, flatten_batch, records_kept_apart, trim_padding
from .paths import build_dir
from .settings import SettingError, cache_root
from .sft_eval import perplexity
from .zero_memory import MEASURED, gradient_tensors, held_bytes, model_state_bytes, rank_memory_table

SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
DTYPES = ("fp32", "bf16", "fp16")
PADDINGS = ("longest", "max_length", "none")
TEST_MODE = dict(max_seq_len=384, per_device_train_batch_size=4, per_device_eval_batch_size=8, max_steps=3)


EPILOG = """\
launch:
  1 process                 python -m sft_lessons.sft ...            (or: sft-lessons sft ...)
  N processes, one machine  torchrun --standalone --nproc_per_node N -m sft_lessons.sft ...   (CPU: gloo, GPU: NCCL)
                            deepspeed --num_gpus N --module sft_lessons.sft ...
  N machines (GPUs)         deepspeed --hostfile hostfile --num_nodes N --module sft_lessons.sft ...

differences from DeepSpeed-Chat step 1 (training/step1_supervised_finetuning/main.py):
  defaults       --data_path local/hh_sft (upstream Dahoas/rm-static), --data_split 10,0,0 (2,4,4),
                 --model_name_or_path smollm2-135m-instruct (required), --max_seq_len 160 (512),
                 --learning_rate 2e-5 (1e-3), --per_device_train_batch_size 8 (16), --dtype fp32 (fp16; fp32 is
                 ours), --lora_module_name layers. (decoder.layers.), --data_output_path build/data_files
                 (/tmp/data_files/), --prompt_format chat (upstream: raw text only), --padding longest
                 (upstream: max_length)
  data           records longer than --max_seq_len are dropped (upstream cuts them); only the answer and its end
                 marker carry labels (upstream: every non-padding token, the prompt too)
  --eot_token    the end marker of the raw format (default: the tokenizer's eos_token); upstream always ends
                 records with eos_token and uses --eot_token only to register a special token (--add_eot_token)
  optimizer      torch AdamW (upstream FusedAdam, a CUDA kernel); DeepSpeedCPUAdam under --offload, as upstream
  ZeRO-3 load    the model is loaded whole on every rank and partitioned by deepspeed.initialize (upstream loads
                 it already partitioned through HfDeepSpeedConfig / zero.Init): every rank must hold it once
  ds config      DeepSpeed's defaults for what upstream sets (overlap_comm, stage-3 thresholds,
                 memory_efficient_linear False, fp16 loss_scale_window); steps_per_print 10**9, DeepSpeed prints
                 nothing (upstream: 10); --deepspeed_config is merged over the built config (upstream: an error)
  data order     seeded with --seed and reshuffled every epoch (upstream: DistributedSampler with seed 0 and the
                 same order every epoch)
  launchers      plain python and torchrun work (LOCAL_RANK is read from the environment); upstream needs the
                 deepspeed launcher's --local_rank (without it, it stops at torch.distributed.get_rank())
  data cache     the file name hashes every input, the data's content included, and only tensors are stored
                 (upstream: a hash of the options; the dataset objects pickled with torch.save)
  lr schedule    floor(epochs x batches / accumulation) steps, and training stops there (upstream: ceil per epoch)
  vocabulary     embeddings resized (to a multiple of 8) only when the tokenizer grew (upstream: always resized
                 to a multiple of 8); --add_eot_token registers the marker only with --prompt_format raw and an
                 explicit --eot_token (upstream: always, default <|endoftext|>)
  --lora_module_name  several substrings may be given, comma-separated (upstream: one)
  logging        rank 0 only logs and writes the model (each rank writes its shard of a checkpoint); --print_loss
                 prints each optimizer step's loss, the mean over ranks (upstream: each micro-batch, every rank);
                 TensorBoard also gets the train loss (DeepSpeed logs only the lr)
  evaluation     token-weighted perplexity of the whole held-out set on every rank (upstream: the mean of per-batch
                 losses, split across ranks)
  saving         safetensors + the whole tokenizer and chat template, written atomically (upstream:
                 pytorch_model.bin, config and vocabulary files)
  added          --end_of_conversation_token (= --eot_token), --prompt_format, --lora_scaling, --max_steps,
                 --padding, --group_by_length, --save_steps, --save_total_limit, --resume_from_checkpoint,
                 --overwrite_output_dir, --dist_timeout, --test_mode

checked before any work (exit status 2, one line naming the option or variable and the valid values):
  every number's range, --data_split, --dtype vs the device, --output_dir and --data_output_path (not a file, no
  file on the way, a non-empty --output_dir must hold an earlier run), --deepspeed_config (readable JSON),
  --resume_from_checkpoint (a complete checkpoint), --enable_tensorboard (the package), SFT_LESSONS_DEVICE and
  SFT_LESSONS_CACHE; then the data: bad lines give file:line, an empty or all-too-long share says why.
on interruption:
  saving         the model is written to a temporary folder beside --output_dir and renamed: a failed save leaves
                 the previous folder as it was and names the temporary one
  --save_steps N DeepSpeed checkpoint every N steps in <output_dir>/checkpoints (step folders renamed into place
                 when complete; `latest` replaced atomically; frozen weights left out, except a tied output layer;
                 --save_total_limit K keeps the newest K); --resume_from_checkpoint continues with the same
                 trainable weights, optimizer, scheduler, data position and random state
  a lost rank    torchrun stops the other ranks; a rank waiting for a dead or hung one gives up after
                 --dist_timeout minutes (exit status 1)
"""


def build_parser() -> argparse.ArgumentParser:
    """DeepSpeed-Chat step 1's arguments (same names and meanings), plus --test_mode, --max_steps, --lora_scaling,
    --padding and --group_by_length."""
    p = argparse.ArgumentParser(prog="sft-lessons sft", description=__doc__.splitlines()[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    a = p.add_argument
    a(
        "--data_path",
        nargs="*",
        default=["local/hh_sft"],
        help="datasets: local/hh_sft, a .jsonl, Dahoas/rm-static",
    )
    a(
        "--data_split",
        default="10,0,0",
        help="shares of phases 1,2,3, e.g. 2,4,4 (this course trains phase 1 only)",
    )
    a("--sft_only_data_path", nargs="*", default=[], help="datasets used entirely for phase 1")
    a("--data_output_path", default=None, help="cache folder for tokenized data (default: build/data_files)")
    a(
        "--model_name_or_path",
        default="smollm2-135m-instruct",
        help="a course model name or a local checkpoint",
    )
    a("--per_device_train_batch_size", type=int, default=8)
    a("--per_device_eval_batch_size", type=int, default=16)
    a("--max_seq_len", type=int, default=160, help="longer records are dropped, never cut")
    a("--learning_rate", type=float, default=2e-5, help="for the non-LoRA parameters")
    a("--weight_decay", type=float, default=0.0)
    a("--num_train_epochs", type=int, default=1)
    a("--gradient_accumulation_steps", type=int, default=1)
    a("--lr_scheduler_type", default="cosine", choices=SCHEDULERS)
    a("--num_warmup_steps", type=int, default=0)
    a(
        "--output_dir",
        default=None,
        help="where the fused model is saved at the end, atomically (default: no saving); a non-empty folder "
        "must hold an earlier run of this command, else --overwrite_output_dir",
    )
    a("--overwrite_output_dir", action="store_true", help="let --output_dir replace a folder with other content")
    a(
        "--save_steps",
        type=int,
        default=0,
        help="every N optimizer steps (and at the last) write a DeepSpeed checkpoint (weights, optimizer, scheduler, "
        "data position, RNG) to <output_dir>/checkpoints; 0: none",
    )
    a("--save_total_limit", type=int, default=0, help="keep only the newest N checkpoints (0: all)")
    a(
        "--resume_from_checkpoint",
        nargs="?",
        const="latest",
        default=None,
        help="continue a run from a checkpoint: 'latest' (the default value) in <output_dir>/checkpoints, a "
        "checkpoints folder, or one step folder; the other options must be those of the interrupted run",
    )
    a("--seed", type=int, default=1234)
    a("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    a("--gradient_checkpointing", action="store_true")
    a(
        "--dropout",
        type=float,
        default=None,
        help="set the model config's dropout rates (dropout, attention_dropout, hidden_dropout, activation_dropout: "
        "those it has) to this value; default: keep the model's own",
    )
    a(
        "--offload",
        action="store_true",
        help="ZeRO-Offload: optimizer state (and with stage 3 the parameters) in CPU memory, DeepSpeedCPUAdam",
    )
    a(
        "--zero_stage",
        type=int,
        default=0,
        choices=(0, 1, 2, 3),
        help="partition across ranks: 1 optimizer state, 2 + gradients, 3 + parameters",
    )
    a("--dtype", default="fp32", choices=DTYPES)
    a("--lora_dim", type=int, default=0, help="LoRA rank r; 0 = full fine-tuning")
    a("--lora_module_name", default="layers.", help="substring of the Linear layers to adapt; several: a,b")
    a("--lora_scaling", type=float, default=1.0, help="LoRA alpha: the update is scaled by alpha / r")
    a("--only_optimize_lora", action="store_true", help="freeze everything but the LoRA factors")
    a("--lora_learning_rate", type=float, default=5e-4, help="learning rate of the LoRA factors")
    a(
        "--prompt_format",
        default="chat",
        choices=PROMPT_FORMATS,
        help="chat (default): the tokenizer's chat template, the format the model is used with; "
        "raw: DeepSpeed-Chat's '\\n\\nHuman: ...\\n\\nAssistant:' text + --end_of_conversation_token",
    )
    a(
        "--end_of_conversation_token",
        "--eot_token",
        dest="end_of_conversation_token",
        default=None,
        help="raw format only: the end marker after each answer (default: the tokenizer's eos_token, as upstream; "
        f"the textbook's is {END_OF_CONVERSATION_TOKEN})",
    )
    a(
        "--add_eot_token",
        action="store_true",
        help="add the end marker as a special token (resizes embeddings)",
    )
    a(
        "--compute_fp32_loss",
        action="store_true",
        help="compute the loss from logits cast to fp32 (matters for --dtype bf16/fp16)",
    )
    a("--enable_tensorboard", action="store_true", help="log loss and lr through DeepSpeed's TensorBoard monitor")
    a("--tensorboard_path", default="step1_tensorboard", help="TensorBoard folder (with --enable_tensorboard)")
    a(
        "--dist_timeout",
        type=float,
        default=10.0,
        help="minutes a rank waits in a collective before the job fails (a lost rank cannot hang it)",
    )
    a("--max_steps", type=int, default=-1, help="stop after this many optimizer steps (-1: all epochs)")
    a("--print_loss", action="store_true", help="print the loss of every optimizer step")
    a(
        "--padding",
        default="longest",
        choices=PADDINGS,
        help="longest (default): cut each batch to its longest row, the same masked loss with less compute; "
        "max_length: DeepSpeed-Chat's every row padded to --max_seq_len; none: padding-free, the batch's records "
        "in one row, positions restarting per record so that they cannot see each other (see `sft-lessons bench`)",
    )
    a(
        "--group_by_length",
        action="store_true",
        help="batch records of similar length: less padding to compute",
    )
    a(
        "--test_mode",
        action="store_true",
        help="tiny random model and tokenizer, a few steps: checks the plumbing",
    )
    try:
        tell_deepspeed()  # DeepSpeed's import would otherwise guess the accelerator and warn
    except SettingError:
        pass  # a bad SFT_LESSONS_DEVICE is reported by validate_args
    import deepspeed

    deepspeed.add_config_arguments(p)  # --deepspeed, --deepspeed_config: a JSON file merged over the built config
    return p


def _writable_dir(option: str, path) -> Path:
    """`path` as a folder that exists or can be made: no file in the way (itself or a parent)."""
    path = Path(path).expanduser()
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(f"{option} {path}: {folder} is a file, not a folder")
            if not os.access(folder, os.W_OK):
                raise ValueError(f"{option} {path}: {folder} is not writable")
            break
    return path


def validate_args(args) -> argparse.Namespace:
    """Check every option, path and setting the run will use, before any expensive work; raise ValueError naming
    the option (or variable) and the valid values. Returns args."""
    parse_data_split(args.data_split)
    if args.lora_dim < 0:
        raise ValueError(f"--lora_dim must be >= 0 (0 = no LoRA), got {args.lora_dim}")
    if args.only_optimize_lora and args.lora_dim == 0:
        raise ValueError("--only_optimize_lora needs --lora_dim > 0")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                 "num_train_epochs"):  # fmt: skip
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.max_seq_len < 8:
        raise ValueError(f"--max_seq_len must be >= 8, got {args.max_seq_len}")
    if args.num_warmup_steps < 0:
        raise ValueError(f"--num_warmup_steps must be >= 0, got {args.num_warmup_steps}")
    if args.max_steps == 0 or args.max_steps < -1:
        raise ValueError(f"--max_steps must be >= 1, or -1 for all epochs; got {args.max_steps}")
    for name in ("learning_rate", "lora_learning_rate", "lora_scaling", "dist_timeout"):
        value = getattr(args, name)
        if not value > 0 or math.isinf(value):
            raise ValueError(f"--{name} must be a positive number, got {value}")
    if not args.weight_decay >= 0:
        raise ValueError(f"--weight_decay must be >= 0, got {args.weight_decay}")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        raise ValueError(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.padding not in PADDINGS:
        raise ValueError(f"--padding {args.padding!r}; valid: {', '.join(PADDINGS)}")
    device = get_device()  # validates SFT_LESSONS_DEVICE
    cache_root()  # validates SFT_LESSONS_CACHE (the models, and build/ of a non-editable install)
    if args.dtype == "fp16" and device.type != "cuda":
        raise ValueError(f"--dtype fp16 needs a GPU (DeepSpeed's fp16 loss scaling); this run is on {device.type}; "
                         "valid here: fp32, bf16")  # fmt: skip
    if args.enable_tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ValueError("--enable_tensorboard needs the tensorboard package: pip install 'sft-lessons[tensorboard]'")
    user_ds_config(args)  # --deepspeed_config: readable JSON object
    for name in [*args.data_path, *args.sft_only_data_path]:
        check_data_path(name)  # a bundled set, an existing .jsonl, or an enabled hub set
    if args.data_output_path:
        _writable_dir("--data_output_path", args.data_output_path)
    if args.save_total_limit < 0:
        raise ValueError(f"--save_total_limit must be >= 0 (0: keep all), got {args.save_total_limit}")
    if args.save_steps < 0:
        raise ValueError(f"--save_steps must be >= 0 (0: no checkpoints), got {args.save_steps}")
    if (args.save_steps or args.resume_from_checkpoint == "latest") and not args.output_dir:
        raise ValueError("--save_steps and --resume_from_checkpoint latest need --output_dir (checkpoints go there)")
    if args.output_dir:
        out = _writable_dir("--output_dir", args.output_dir)
        previous = out.is_dir() and any(out.iterdir())
        ours = (out / "history.json").is_file() or (out / CHECKPOINTS).is_dir()
        if previous and not args.overwrite_output_dir and not ours:
            raise ValueError(f"--output_dir {out} is a non-empty folder that does not hold an earlier run of this "
                             "command; pick another folder or pass --overwrite_output_dir")  # fmt: skip
    if args.resume_from_checkpoint:
        find_checkpoint(args)
    return args


def parse_args(argv=None) -> argparse.Namespace:
    """Parsed and validated arguments (--test_mode sets small sizes where the command line gives none)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.test_mode:  # its sizes replace the defaults only: what the command line gives wins
        parser.set_defaults(**TEST_MODE)
        args = parser.parse_args(argv)
    return validate_args(args)


_OWN_GROUP = False  # True once init_distributed made a one-process group itself (plain `python`)


def init_distributed(device, timeout_minutes: float = 10.0) -> int:
    """deepspeed.init_distributed for this process (gloo on CPU, NCCL on GPU); returns the world size. A collective
    that waits longer than `timeout_minutes` (a rank died or hangs) raises instead of hanging the job."""
    import deepspeed

    global _OWN_GROUP
    if "RANK" not in os.environ:  # plain `python`: a one-process group on a free local port
        _OWN_GROUP = True
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device.type == "cpu":
        # gloo does the collectives; DeepSpeed's shared-memory kernel would first be compiled (about a minute)
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    timeout = datetime.timedelta(minutes=timeout_minutes)
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", verbose=False,
                               timeout=timeout)  # fmt: skip
    # DeepSpeed makes its data-parallel groups with torch's default timeout (30 min for gloo): give them ours
    backend = deepspeed.comm.comm.cdb
    backend.new_group = lambda ranks: torch.distributed.new_group(ranks, timeout=timeout)
    return world


def get_train_ds_config(args, world_size: int = 1) -> dict:
    """The DeepSpeed config: ZeRO stage, offload, dtype, batch sizes, gradient clipping, TensorBoard; a
    --deepspeed_config file is merged over it (its top-level keys win, `zero_optimization` key by key)."""
    zero = {"stage": args.zero_stage}
    if args.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        if args.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    config = {
        "train_micro_batch_size_per_gpu": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "train_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # torch's AdamW: no CUDA kernels to compile
        "bf16": {"enabled": args.dtype == "bf16"},
        "fp16": {"enabled": args.dtype == "fp16"},
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if getattr(args, "enable_tensorboard", False):  # DeepSpeed-Chat's section: loss, lr per step
        config["tensorboard"] = {"enabled": True, "output_path": f"{args.tensorboard_path}/ds_tensorboard_logs/",
                                 "job_name": "step1_model_tensorboard"}  # fmt: skip
    extra = user_ds_config(args)
    config["zero_optimization"].update(extra.pop("zero_optimization", {}))
    config.update(extra)
    return config


def user_ds_config(args) -> dict:
    """The JSON object in --deepspeed_config (or the deprecated --deepscale_config), {} if none; ValueError if bad."""
    path = getattr(args, "deepspeed_config", None) or getattr(args, "deepscale_config", None)
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except OSError as exc:
        raise ValueError(f"--deepspeed_config {path}: cannot read it ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--deepspeed_config {path}:{exc.lineno}: not JSON ({exc.msg})") from None
    if not isinstance(config, dict):
        raise ValueError(f"--deepspeed_config {path}: expected a JSON object, got {type(config).__name__}")
    return config


def optimizer_groups(model, weight_decay: float, lora_lr: float) -> list[dict]:
    """DeepSpeed-Chat's three groups: decayed weights, LoRA factors (own lr), biases and norms (no decay)."""
    no_decay = ("bias", "norm.weight", "layernorm.weight", "ln_f.weight")
    groups = [dict(params=[], weight_decay=weight_decay), dict(params=[], weight_decay=weight_decay, lr=lora_lr),
              dict(params=[], weight_decay=0.0)]  # fmt: skip
    for name, param in model.named_parameters():
        if param.requires_grad:
            index = 2 if any(k in name.lower() for k in no_decay) else 1 if "lora_" in name else 0
            groups[index]["params"].append(param)
    return [g for g in groups if g["params"]]


@dataclass
class SFTResult:
    """What a run produced: the trained model, its history and measurements."""

    model: object
    tokenizer: object
    args: argparse.Namespace
    history: list = field(default_factory=list)  # one dict per optimizer step: step, epoch, loss, lr, seconds, tokens
    perplexity: list = field(default_factory=list)  # (epoch, held-out perplexity), epoch 0 = before training
    train_seconds: float = 0.0
    real_tokens: int = 0  # non-padding tokens processed in training
    padded_tokens: int = 0  # tokens the model actually ran on (after trimming each batch, unless max_length)
    num_train: int = 0
    num_eval: int = 0
    trainable_params: int = 0
    output_dir: str | None = None
    world_size: int = 1
    rank_memory: list = field(default_factory=list)  # per rank: bytes held (zero_memory.MEASURED), most at once

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / max(self.train_seconds, 1e-9)


DROPOUT_KEYS = ("dropout", "attention_dropout", "hidden_dropout", "activation_dropout")


def configure_dropout(config, dropout: float | None) -> list[str]:
    """Set each dropout rate the config has (DROPOUT_KEYS) to `dropout`, as DeepSpeed-Chat does; returns the keys set."""
    if dropout is None:
        return []
    keys = [k for k in DROPOUT_KEYS if hasattr(config, k)]
    for key in keys:
        setattr(config, key, dropout)
    return keys


def _load(args, model, tokenizer):
    """(model, tokenizer): the given ones, the tiny test pair, or the checkpoint named by --model_name_or_path."""
    if args.test_mode and model is None:
        tokenizer = tokenizer or tiny_tokenizer()
        overrides = dict.fromkeys(configure_dropout(LlamaConfig(), args.dropout), args.dropout)
        model = tiny_causal_lm("llama", seed=args.seed, vocab_size=len(tokenizer), **overrides)
    if tokenizer is None:
        eot = args.end_of_conversation_token if args.add_eot_token and args.prompt_format == "raw" else None
        tokenizer = load_hf_tokenizer(args.model_name_or_path, add_special_tokens=eot)
    if model is None:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
        path = resolve(args.model_name_or_path)
        config = AutoConfig.from_pretrained(path)
        configure_dropout(config, args.dropout)  # before the layers are built: they copy the rates
        model = quiet_from_pretrained(AutoModelForCausalLM, path, config=config, dtype=dtype)
    elif args.dropout is not None and not args.test_mode:
        raise ValueError("--dropout applies when the model is loaded; this model was passed in already built")
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # a marker added as a new token
        model.resize_token_embeddings(int(8 * math.ceil(len(tokenizer) / 8.0)))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def fp32_causal_lm_loss(logits, labels) -> torch.Tensor:
    """Next-token cross-entropy over the labelled (non -100) tokens, computed from logits cast to fp32."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:].to(logits.device)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                             ignore_index=IGNORE_INDEX)  # fmt: skip


def _mean_over_ranks(value: float, world: int, device) -> float:
    """The mean of `value` over all ranks (the loss a run logs is the global batch's, as on one rank)."""
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t) / world


def _gather(obj, world: int) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if world == 1:
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


CHECKPOINTS = "checkpoints"  # folder inside --output_dir: one folder per --save_steps checkpoint, and `latest`


def checkpoint_root(args) -> Path:
    """Where --save_steps writes and --resume_from_checkpoint latest reads: <output_dir>/checkpoints."""
    return Path(args.output_dir) / CHECKPOINTS


def rng_states() -> dict:
    """Python, NumPy and torch random states (dropout draws from torch's)."""
    return dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def save_checkpoint(engine, root: Path, step: int, state: dict, say=print, keep: int = 0) -> Path:
    """DeepSpeed checkpoint (weights, optimizer, scheduler) plus `state` (data position, history, RNG) as
    root/step{N}: written under a temporary name, renamed when every rank is done, then `latest` replaced; with
    keep > 0 only the newest `keep` step folders are kept."""
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    tag, tmp = f"step{step}", f".saving-step{step}"
    start = time.perf_counter()
    if rank0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root / tmp, ignore_errors=True)  # left by a run killed while saving
    _barrier(world)
    # frozen weights (LoRA's W0) are not saved: a resume rebuilds them from --model_name_or_path
    engine.save_checkpoint(str(root), tag=tmp, client_state=dict(sft_state=state), save_latest=False,
                           exclude_frozen_parameters=True)  # fmt: skip
    _barrier(world)
    if rank0:
        shutil.rmtree(root / tag, ignore_errors=True)
        os.replace(root / tmp, root / tag)
        atomic_write_text(root / "latest", tag)
        size = sum(f.stat().st_size for f in (root / tag).rglob("*") if f.is_file())
        say(f"checkpoint {root / tag}: {size / 2**20:.1f} MiB in {time.perf_counter() - start:.2f} s")
        if keep:  # --save_total_limit: the oldest step folders go, the newest `keep` stay
            steps = sorted((int(d.name[4:]), d) for d in root.glob("step*") if d.name[4:].isdigit())
            for _, old in steps[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    _barrier(world)
    return root / tag


def find_checkpoint(args) -> tuple[Path, str]:
    """(folder, tag) named by --resume_from_checkpoint: 'latest' (in <output_dir>/checkpoints), a checkpoints
    folder holding `latest`, or one step folder; ValueError naming what is missing."""
    given = args.resume_from_checkpoint
    root = checkpoint_root(args) if given == "latest" else Path(given).expanduser()
    if (root / "latest").is_file():
        tag = (root / "latest").read_text(encoding="utf-8").strip()
    elif root.is_dir() and root.name.startswith("step"):
        root, tag = root.parent, root.name
    else:
        raise ValueError(f"--resume_from_checkpoint {given}: no checkpoint at {root} (expected a folder with a "
                         "`latest` file, or a step folder); --save_steps N writes them")  # fmt: skip
    if not any((root / tag).glob("*model_states.pt")):
        raise ValueError(f"--resume_from_checkpoint {given}: {root / tag} holds no complete checkpoint")
    return root, tag


def resume(engine, args, result, say=print) -> dict:
    """Load the checkpoint into the engine, restore history, tokens and RNG; returns the data position."""
    root, tag = find_checkpoint(args)
    path, client = engine.load_checkpoint(str(root), tag=tag, load_module_strict=False)  # frozen weights: not saved
    if path is None or "sft_state" not in client:
        raise ValueError(f"--resume_from_checkpoint: {root / tag} could not be loaded")
    state = client["sft_state"]
    result.history, result.perplexity = list(state["history"]), list(state["perplexity"])
    result.train_seconds, result.real_tokens = state["train_seconds"], state["real_tokens"]
    result.padded_tokens = state["padded_tokens"]
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    say(f"resumed from {root / tag}: step {len(result.history)}, epoch {state['epoch']}, "
        f"{state['micro_batches']} micro-batches of it done")  # fmt: skip
    return state


def train_sft(args, model=None, tokenizer=None, log=print) -> SFTResult:
    """Run DeepSpeed-Chat step 1 on one process (or one rank): data, LoRA, deepspeed.initialize, train, eval, save."""
    import deepspeed

    device = get_device()
    if args.local_rank < 0 and "LOCAL_RANK" in os.environ and not _OWN_GROUP:
        args.local_rank = int(os.environ["LOCAL_RANK"])  # torchrun passes it in the environment, not as an option
    if device.type == "cuda" and args.local_rank >= 0:
        torch.cuda.set_device(args.local_rank)
        device = torch.device("cuda", args.local_rank)
    # under torchrun or deepspeed (not a group this module made): DistributedSampler, as upstream with a local_rank
    launched = "RANK" in os.environ and not _OWN_GROUP
    set_seed(args.seed)
    model, tokenizer = _load(args, model, tokenizer)
    marker = tokenizer.eos_token if args.prompt_format == "chat" else args.end_of_conversation_token
    eot = end_of_conversation_ids(tokenizer, marker or tokenizer.eos_token)
    # generate() should stop at the marker too (a marker that splits needs stop_sequences, see sft_eval)
    model.generation_config.eos_token_id = sorted({tokenizer.eos_token_id, *(eot if len(eot) == 1 else [])})
    if args.lora_dim > 0:  # first, so a bad --lora_module_name fails before any other work
        convert_linear_layer_to_lora(
            model, args.lora_module_name.split(","), args.lora_dim, args.lora_scaling
        )
        if args.only_optimize_lora:
            only_optimize_lora_parameters(model)
    tell_deepspeed(device)
    world = init_distributed(device, timeout_minutes=getattr(args, "dist_timeout", 10.0))
    rank = int(os.environ.get("RANK", "0"))
    data_out = args.data_output_path or str(build_dir() / "data_files")
    train_set, eval_set = create_prompt_dataset(
        args.local_rank, args.data_path, args.data_split, data_out, 1, args.seed, tokenizer, args.max_seq_len,
        end_of_conversation_token=args.end_of_conversation_token, sft_only_data_path=args.sft_only_data_path,
        prompt_format=args.prompt_format,
    )  # fmt: skip
    if len(train_set) == 0:
        dropped = train_set.num_dropped
        why = (f"all {dropped} records of the phase-1 share are longer than --max_seq_len {args.max_seq_len}" if dropped
               else f"--data_path {' '.join(args.data_path)} with --data_split {args.data_split} gives phase 1 no records")
        raise ValueError(f"no training records: {why}")
    if args.test_mode:
        eval_set.tensors = {k: v[:16] for k, v in eval_set.tensors.items()}
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()  # transformers' new name for gradient_checkpointing_enable
        model.enable_input_require_grads()  # frozen embeddings would otherwise cut the graph (the seed forbade this)
    model.to(device)
    if args.padding == "none" and not records_kept_apart(model):
        raise ValueError(f"--padding none: {type(model).__name__}'s attention lets flattened records see each other "
                         "(it ignores position_ids when building its mask); use --padding longest")  # fmt: skip
    if args.group_by_length:
        lengths = train_set.tensors["attention_mask"].sum(dim=1).tolist()
        sampler = LengthGroupedBatches(lengths, args.per_device_train_batch_size, args.seed, rank, world)
        loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=default_data_collator)
    else:  # DeepSpeed-Chat's sampling: the same global batches for any number of ranks under a launcher
        generator = torch.Generator().manual_seed(args.seed)
        sampler = DistributedSampler(train_set, world, rank, seed=args.seed) if launched else RandomSampler(
            train_set, generator=generator)  # fmt: skip
        loader = DataLoader(train_set, args.per_device_train_batch_size, sampler=sampler,
                            collate_fn=default_data_collator)  # fmt: skip
    # the engine steps every gradient_accumulation_steps micro-batches, counted across epochs
    steps = args.num_train_epochs * len(loader) // args.gradient_accumulation_steps
    steps = min(steps, args.max_steps) if args.max_steps > 0 else steps
    if steps == 0:
        raise ValueError(f"{len(loader)} micro-batches per epoch < --gradient_accumulation_steps "
                         f"{args.gradient_accumulation_steps}: no optimizer step would run")  # fmt: skip
    groups = optimizer_groups(model, args.weight_decay, args.lora_learning_rate)
    if args.offload:  # ZeRO-Offload steps the optimizer on the CPU with DeepSpeed's vectorised Adam, as upstream
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(groups, lr=args.learning_rate, betas=(0.9, 0.95))
    else:
        optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.95))
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, args.num_warmup_steps, steps)
    trainable = count_parameters(model)  # before ZeRO-3 partitions them
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=get_train_ds_config(args, world)
    )
    result = SFTResult(engine.module, tokenizer, args, num_train=len(train_set), num_eval=len(eval_set),
                       trainable_params=trainable, world_size=world)  # fmt: skip
    rank0 = rank == 0
    say = log if rank0 else (lambda *a, **k: None)
    say(f"train {len(train_set)} records ({train_set.num_dropped} longer than {args.max_seq_len} dropped), "
        f"eval {len(eval_set)}; {steps} optimizer steps on {world} rank(s); "
        f"trainable params {result.trainable_params:,}")  # fmt: skip
    position = dict(epoch=1, micro_batches=0, sampler_state=None)  # where the data stands: a resume starts here
    if args.resume_from_checkpoint:
        position = resume(engine, args, result, say)
    else:
        result.perplexity.append((0, perplexity(engine, eval_set, args.per_device_eval_batch_size)))
        say(f"epoch 0/{args.num_train_epochs}: held-out perplexity {result.perplexity[-1][1]:.2f}")
    micro_losses, done = [], len(result.history) >= steps
    held = dict.fromkeys(MEASURED, 0)  # the most this rank held at once, over the run
    for epoch in range(position["epoch"], args.num_train_epochs + 1):
        if done:
            break
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        skip = position["micro_batches"] if epoch == position["epoch"] else 0
        if launched or args.group_by_length:
            sampler_state = None  # the order is a function of (seed, epoch)
        elif skip and position["sampler_state"] is not None:
            generator.set_state(position["sampler_state"])  # this epoch's shuffle, as the interrupted run drew it
            sampler_state = position["sampler_state"]
        else:
            sampler_state = generator.get_state()
        engine.train()
        start = step_start = time.perf_counter()
        step_tokens = 0
        batches = itertools.islice(loader, skip, None)  # resumed: the micro-batches trained before are skipped
        micro = skip
        for batch in progress(batches, f"epoch {epoch}", disable=not rank0, total=len(loader) - skip):
            micro += 1
            real = int(batch["attention_mask"].sum()) * world
            if args.padding == "longest":  # max_length keeps DeepSpeed-Chat's padding columns: same loss
                batch = trim_padding(batch)
            elif args.padding == "none":  # one row, no padding at all: same loss again (tests/test_padding.py)
                batch = flatten_batch(batch)
            batch = {k: v.to(device) for k, v in batch.items()}
            if args.compute_fp32_loss:
                labels = batch.pop("labels")
                loss = fp32_causal_lm_loss(engine(**batch, use_cache=False).logits, labels)
            else:
                loss = engine(**batch, use_cache=False).loss
            engine.backward(loss)
            held["gradients"] = max(held["gradients"], held_bytes(gradient_tensors(engine)))
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            for key, value in model_state_bytes(engine).items():
                held[key] = max(held[key], value)
            micro_losses.append(loss.item())
            result.real_tokens += real
            step_tokens += real
            result.padded_tokens += batch["input_ids"].numel() * world
            if boundary:
                mean = _mean_over_ranks(sum(micro_losses) / len(micro_losses), world, device)
                now = time.perf_counter()  # seconds: this step's wall time; tokens: its non-padding tokens, all ranks
                result.history.append(dict(step=len(result.history) + 1, epoch=epoch, loss=mean,
                                           lr=scheduler.get_last_lr(), seconds=now - step_start,
                                           tokens=step_tokens))  # fmt: skip
                micro_losses, step_tokens = [], 0
                if args.enable_tensorboard and rank0:  # DeepSpeed's monitor logs the lr itself, not the loss
                    engine.monitor.write_events([("Train/Samples/train_loss", mean, engine.global_samples)])
                if args.print_loss:
                    say(f"step {len(result.history)}/{steps}: loss {result.history[-1]['loss']:.4f}")
                if len(result.history) >= steps:
                    done = True
                if args.save_steps and (len(result.history) % args.save_steps == 0 or done):
                    result.train_seconds += time.perf_counter() - start
                    state = dict(epoch=epoch, micro_batches=micro, sampler_state=sampler_state,
                                 history=result.history, perplexity=result.perplexity,
                                 train_seconds=result.train_seconds, real_tokens=result.real_tokens,
                                 padded_tokens=result.padded_tokens, rng=rng_states())  # fmt: skip
                    save_checkpoint(engine, checkpoint_root(args), len(result.history), state, say,
                                    args.save_total_limit)  # fmt: skip
                    start = time.perf_counter()
                step_start = time.perf_counter()
                if done:
                    break
        result.train_seconds += time.perf_counter() - start
        result.perplexity.append((epoch, perplexity(engine, eval_set, args.per_device_eval_batch_size)))
        say(f"epoch {epoch}/{args.num_train_epochs}: held-out perplexity {result.perplexity[-1][1]:.2f}")
        if done:
            break
    last_epoch = result.history[-1]["epoch"] if result.history else 0
    if result.perplexity[-1][0] < last_epoch:  # resumed from the final checkpoint, saved before this evaluation
        result.perplexity.append((last_epoch, perplexity(engine, eval_set, args.per_device_eval_batch_size)))
    say(f"trained {len(result.history)} steps in {result.train_seconds:.1f} s, "
        f"{result.tokens_per_second:.0f} tokens/s (non-padding)")  # fmt: skip
    result.rank_memory = _gather(held, world)
    if world > 1 or args.print_loss:
        say(f"model-state tensors per rank (ZeRO stage {args.zero_stage}; each column: its largest value in the "
            "run; buffers not counted):\n"
            + rank_memory_table(result.rank_memory))  # fmt: skip
    engine.eval()
    if args.output_dir:
        _barrier(world)  # every rank has finished its last checkpoint
        convert_lora_to_linear_layer(engine.module)  # fuse W0 += s B A, as DeepSpeed-Chat does before saving
        # every rank takes part (ZeRO-3 gathers the partitions); rank 0 writes
        memory = dict(zero_stage=args.zero_stage, world_size=world, dtype=args.dtype, unit="bytes",
                      ranks=result.rank_memory)  # fmt: skip
        history = dict(history=result.history, perplexity=result.perplexity, world_size=world)
        extra = {"zero_memory.json": json.dumps(memory, indent=1) + "\n",
                 "history.json": json.dumps(history, indent=1) + "\n"}  # fmt: skip
        saved = save_hf_format(engine, tokenizer, args, write=rank0, extra_files=extra, keep=(CHECKPOINTS,))
        if rank0:
            result.output_dir = str(saved)
            say(f"saved a Hugging Face checkpoint to {args.output_dir}")
    return result


LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launch(nproc: int, argv: list[str], device: str = "cpu", timeout: float = 600) -> subprocess.CompletedProcess:
    """Run this command on `nproc` ranks of this machine with torchrun (`--standalone`), as a child process;
    raises RuntimeError with the end of its stderr if it fails."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "sft_lessons.sft", *argv]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}  # torchrun sets them per rank
    env.update(SFT_LESSONS_DEVICE=device, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // nproc)))
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:])} failed ({run.returncode}):\n{run.stderr[-3000:]}")
    return run


def main(argv=None) -> int:
    """Command-line entry point; bad arguments print one clear line and exit with status 2."""
    parser = build_parser()
    try:
        args = parse_args(argv)
        quiet()
        train_sft(args)
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # saving failed (disk full, permissions): the message says where the model is
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # gloo and NCCL report a collective past --dist_timeout as a RuntimeError
        if "timed out" not in str(exc).lower() and "timeout" not in str(exc).lower():
            raise
        rank = os.environ.get("RANK", "0")
        print(f"{parser.prog}: error: rank {rank} waited longer than --dist_timeout {args.dist_timeout:g} min "
              f"for the other ranks (one died or hangs; see its own message): {str(exc).splitlines()[0]}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
