import json
import math
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sft_lessons import sft
from sft_lessons.course import cli
from sft_lessons.lora import convert_linear_layer_to_lora
from sft_lessons.models import tiny_causal_lm

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data_split", "2,4"], "data_split '2,4'"),
        (["--data_split", "x,y,z"], "data_split 'x,y,z'"),
        (["--data_split", "0,0,0"], "positive sum"),
        (["--lora_dim", "-1"], "--lora_dim must be >= 0"),
        (["--only_optimize_lora"], "needs --lora_dim > 0"),
        (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps must be >= 1"),
    ],
)
def test_bad_arguments_are_named(argv, message, capsys):
    assert sft.main(argv) == 2
    assert message in capsys.readouterr().err


def test_argparse_choices(capsys):
    with pytest.raises(SystemExit):
        sft.parse_args(["--zero_stage", "4"])
    assert "invalid choice: 4" in capsys.readouterr().err


def test_padding_argument(capsys):
    assert sft.parse_args([]).padding == "longest"  # dynamic padding: the same masked loss, less compute
    assert sft.parse_args(["--padding", "max_length"]).padding == "max_length"
    assert sft.parse_args(["--test_mode", "--padding", "max_length"]).padding == "max_length"
    with pytest.raises(SystemExit):
        sft.parse_args(["--padding", "right"])
    assert "invalid choice: 'right'" in capsys.readouterr().err
    args = sft.parse_args([])
    args.padding = "dynamic"
    with pytest.raises(ValueError, match="--padding 'dynamic'; valid: longest, max_length"):
        sft.validate_args(args)


def test_prompt_format_and_end_marker_defaults(capsys):
    args = sft.parse_args([])
    assert args.prompt_format == "chat"  # trained as it is chatted with
    assert args.end_of_conversation_token is None  # raw format: the tokenizer's eos_token, as upstream
    assert sft.parse_args(["--prompt_format", "raw"]).prompt_format == "raw"
    with pytest.raises(SystemExit):
        sft.parse_args(["--prompt_format", "alpaca"])
    assert "invalid choice: 'alpaca'" in capsys.readouterr().err


def test_seed_argument_names():
    names = {a.dest for a in sft.build_parser()._actions}
    step1 = {"data_path", "data_split", "data_output_path", "max_seq_len", "model_name_or_path", "lora_dim",
             "lora_module_name", "only_optimize_lora", "lora_learning_rate", "gradient_checkpointing",
             "per_device_train_batch_size", "learning_rate", "num_train_epochs", "gradient_accumulation_steps",
             "lr_scheduler_type", "num_warmup_steps", "zero_stage", "offload", "dtype", "seed", "output_dir",
             "test_mode"}  # fmt: skip
    assert step1 <= names


def test_ds_config_follows_arguments():
    args = sft.parse_args(["--zero_stage", "2", "--gradient_accumulation_steps", "4", "--dtype", "bf16"])
    config = sft.get_train_ds_config(args, world_size=2)
    assert config["zero_optimization"] == {"stage": 2}
    assert config["train_batch_size"] == 8 * 4 * 2
    assert config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    args = sft.parse_args(["--zero_stage", "3", "--offload"])
    assert set(sft.get_train_ds_config(args)["zero_optimization"]) == {
        "stage",
        "offload_optimizer",
        "offload_param",
    }


def test_optimizer_groups_give_lora_its_own_lr():
    model = convert_linear_layer_to_lora(tiny_causal_lm("llama"), "layers.", lora_dim=2)
    groups = sft.optimizer_groups(model, weight_decay=0.1, lora_lr=1e-3)
    assert [g.get("lr") for g in groups] == [None, 1e-3, None]
    assert groups[2]["weight_decay"] == 0.0
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert sum(p.numel() for p in groups[1]["params"]) == n_lora
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # LoRA freezes W0, not the rest
    assert sum(p.numel() for g in groups for p in g["params"]) == trainable


def test_unknown_lora_module_fails_fast(capsys):
    argv = ["--test_mode", "--lora_dim", "4", "--lora_module_name", "decoder.layers."]
    assert sft.main(argv) == 2
    assert "part_module_name=['decoder.layers.'] matches no nn.Linear" in capsys.readouterr().err


def test_empty_or_all_too_long_data_stops_with_the_reason(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    argv = ["--test_mode", "--data_path", str(empty), "--data_output_path", str(tmp_path / "cache")]
    assert sft.main(argv) == 2
    assert "no training records: --data_path" in capsys.readouterr().err
    long_only = ["--test_mode", "--data_output_path", str(tmp_path / "cache2"), "--max_seq_len", "8"]
    args = sft.parse_args(long_only)  # 8 tokens: shorter than every bundled record
    with pytest.raises(ValueError, match=r"no training records: all \d+ records of the phase-1 share are longer"):
        sft.train_sft(args, log=lambda *a: None)


def test_cli_forwards_to_sft(capsys):
    assert cli.main(["sft", "--data_split", "1,2"]) == 2
    assert "data_split '1,2'" in capsys.readouterr().err


@pytest.mark.slow
def test_test_mode_end_to_end_under_60s(tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "model"
    cmd = [sys.executable, "-m", "sft_lessons.sft", "--test_mode", "--output_dir", str(out),
           "--data_output_path", str(tmp_path / "data"), "--lora_dim", "4", "--only_optimize_lora",
           "--gradient_accumulation_steps", "2", "--zero_stage", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SFT_LESSONS_DEVICE": "cpu"}
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = usage.ru_utime + usage.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    assert run.returncode == 0, run.stderr[-2000:]
    assert "held-out perplexity" in run.stdout and "saved a Hugging Face checkpoint" in run.stdout
    assert cpu_seconds < 60, f"--test_mode used {cpu_seconds:.0f} CPU seconds"  # robust to a busy machine
    overloaded = os.getloadavg()[0] > 2 * (os.cpu_count() or 1)  # shared CI runners: wall time means little
    assert seconds < 60 or overloaded, f"--test_mode took {seconds:.0f} s of wall time"
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == 320 and not any("lora" in k for k in model.state_dict())
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


@pytest.mark.slow
def test_zero_stages_agree_in_process(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_LESSONS_DEVICE", "cpu")
    results = {}
    for stage in (0, 3):
        argv = ["--test_mode", "--zero_stage", str(stage), "--lora_dim", "4", "--only_optimize_lora",
                "--lora_learning_rate", "1e-2", "--max_steps", "2", "--data_output_path", str(tmp_path / "data"),
                "--output_dir", str(tmp_path / f"z{stage}")]  # fmt: skip
        results[stage] = sft.train_sft(sft.parse_args(argv), log=lambda *a: None)
    zero, three = results[0], results[3]
    assert zero.trainable_params == three.trainable_params > 0
    assert [h["loss"] for h in zero.history] == pytest.approx([h["loss"] for h in three.history], rel=1e-4)
    assert zero.perplexity[-1][1] == pytest.approx(three.perplexity[-1][1], rel=1e-4)
    assert zero.perplexity[-1][1] < zero.perplexity[0][1]  # it learnt something
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "z0" / "model.safetensors"), load_file(tmp_path / "z3" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_max_length_padding_keeps_every_column(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_LESSONS_DEVICE", "cpu")  # conftest restores the launcher variables afterwards
    argv = ["--test_mode", "--padding", "max_length", "--data_output_path", str(tmp_path)]
    result = sft.train_sft(sft.parse_args(argv), log=lambda *a: None)
    args, steps = result.args, len(result.history)  # one micro-batch per step
    assert steps == args.max_steps and args.gradient_accumulation_steps == 1
    # every batch keeps all max_seq_len columns: never trimmed
    assert result.padded_tokens == steps * args.per_device_train_batch_size * args.max_seq_len
    assert 0 < result.real_tokens < result.padded_tokens


@pytest.mark.slow
def test_padding_free_batches_train_the_same_as_padded(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_LESSONS_DEVICE", "cpu")
    runs = {}
    for mode in ("longest", "none"):
        argv = ["--test_mode", "--padding", mode, "--max_steps", "3", "--data_output_path", str(tmp_path)]
        runs[mode] = sft.train_sft(sft.parse_args(argv), log=lambda *a: None)
    longest, flat = runs["longest"], runs["none"]
    assert [h["loss"] for h in flat.history] == pytest.approx([h["loss"] for h in longest.history], abs=1e-5)
    assert flat.perplexity[-1][1] == pytest.approx(longest.perplexity[-1][1], rel=1e-5)
    assert flat.real_tokens == flat.padded_tokens == longest.real_tokens < longest.padded_tokens  # no padding at all


# ---- several ranks (torchrun, gloo on CPU), DeepSpeed-Chat's remaining options ----


def _torchrun(nproc: int, argv: list[str], tmp_path) -> subprocess.CompletedProcess:
    return sft.launch(nproc, argv, timeout=300)  # raises with the ranks' stderr if the job fails


@pytest.mark.slow
def test_two_ranks_train_the_one_rank_model_and_partition_per_stage(tmp_path):
    from transformers import AutoModelForCausalLM

    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage3_param_persistence_threshold": 0}}')
    common = ["--test_mode", "--data_output_path", str(tmp_path / "data"), "--max_steps", "4",
              "--gradient_accumulation_steps", "2", "--deepspeed_config", str(tmp_path / "ds.json")]  # fmt: skip
    start = time.perf_counter()
    # one rank, micro-batch 4 x 2 accumulation = the global batch of two ranks with micro-batch 2 x 2 accumulation
    _torchrun(1, [*common, "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / "one")], tmp_path)
    runs = {}
    for stage in (0, 1, 2, 3):
        out = tmp_path / f"two{stage}"
        run = _torchrun(2, [*common, "--per_device_train_batch_size", "2", "--zero_stage", str(stage),
                            "--output_dir", str(out)], tmp_path)  # fmt: skip
        assert run.stdout.count("saved a Hugging Face checkpoint") == 1  # rank 0 alone logs and saves
        assert run.stdout.count("train 270 records") == 1
        runs[stage] = {name: json.loads((out / f"{name}.json").read_text()) for name in ("history", "zero_memory")}
    seconds = time.perf_counter() - start
    one = json.loads((tmp_path / "one" / "history.json").read_text())
    ref = [h["loss"] for h in one["history"]]
    for stage, run in runs.items():
        assert run["history"]["world_size"] == 2 and len(run["history"]["history"]) == 4
        losses = [h["loss"] for h in run["history"]["history"]]
        # the same 8 records per step; the mean of per-micro-batch token means weights tokens a little differently
        # (measured: at most 0.0012 apart)
        assert losses == pytest.approx(ref, abs=5e-3), stage
        assert losses == pytest.approx([h["loss"] for h in runs[0]["history"]["history"]], abs=1e-5)
    memory = {stage: run["zero_memory"]["ranks"] for stage, run in runs.items()}
    assert all(len(ranks) == 2 and ranks[0] == ranks[1] for ranks in memory.values())
    full = memory[0][0]  # ZeRO-0: every rank holds everything (fp32: the parameters are Adam's master copy)
    assert full["gradients"] == full["parameters"] and full["adam_moments"] == 2 * full["parameters"]
    assert full["master_weights"] == 0
    half = full["parameters"] // 2
    expected = {1: dict(parameters=full["parameters"], gradients=full["gradients"], adam_moments=2 * half,
                        master_weights=half),
                2: dict(parameters=full["parameters"], gradients=half, adam_moments=2 * half, master_weights=half),
                3: dict(parameters=half, gradients=half, adam_moments=2 * half, master_weights=half)}  # fmt: skip
    for stage, want in expected.items():
        assert memory[stage][0] == want, (stage, memory[stage][0])
    # the ZeRO-3 checkpoint saved from two ranks loads, and computes what the one-rank model computes
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    with torch.no_grad():
        logits = {name: AutoModelForCausalLM.from_pretrained(tmp_path / name)(ids).logits
                  for name in ("one", "two3")}  # fmt: skip
    torch.testing.assert_close(logits["two3"], logits["one"], atol=2e-3, rtol=0)
    assert seconds < 120 or os.getloadavg()[0] > 2 * (os.cpu_count() or 1), f"{seconds:.0f} s"


def _quick(tmp_path, *extra) -> "sft.SFTResult":
    argv = ["--test_mode", "--max_steps", "2", "--data_output_path", str(tmp_path / "data"), *extra]
    return sft.train_sft(sft.parse_args(argv), log=lambda *a: None)


@pytest.mark.slow
def test_offload_steps_with_deepspeed_cpu_adam(tmp_path, monkeypatch):
    import shutil

    from deepspeed.ops.adam import DeepSpeedCPUAdam

    if not any(shutil.which(c) for c in (os.environ.get("CXX", "c++"), "g++", "clang++")):
        pytest.skip("DeepSpeed compiles its CPU Adam (cpu_adam) at first use and no C++ compiler is installed")
    monkeypatch.setenv("SFT_LESSONS_DEVICE", "cpu")
    made = []
    init = DeepSpeedCPUAdam.__init__
    monkeypatch.setattr(DeepSpeedCPUAdam, "__init__", lambda self, *a, **k: made.append(1) or init(self, *a, **k))
    plain = _quick(tmp_path, "--zero_stage", "2")
    offload = _quick(tmp_path, "--zero_stage", "2", "--offload")  # first use compiles DeepSpeed's cpu_adam (~1 min)
    assert made == [1]  # DeepSpeed-Chat's optimizer under ZeRO-Offload; torch's AdamW is rejected there
    # the same Adam update (decoupled weight decay, betas 0.9/0.95): the same losses
    assert [h["loss"] for h in offload.history] == pytest.approx([h["loss"] for h in plain.history], abs=1e-5)
    assert offload.perplexity[-1][1] == pytest.approx(plain.perplexity[-1][1], rel=1e-4)


@pytest.mark.slow
def test_bf16_gradient_checkpointing_and_fp32_loss_run_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_LESSONS_DEVICE", "cpu")
    base = _quick(tmp_path)
    checkpointed = _quick(tmp_path, "--gradient_checkpointing")  # recomputes activations: the same numbers
    assert [h["loss"] for h in checkpointed.history] == pytest.approx([h["loss"] for h in base.history], abs=1e-6)
    fp32_loss = _quick(tmp_path, "--compute_fp32_loss")  # fp32 model: the same loss computed by our own function
    assert [h["loss"] for h in fp32_loss.history] == pytest.approx([h["loss"] for h in base.history], abs=1e-6)
    bf16 = _quick(tmp_path, "--dtype", "bf16", "--zero_stage", "2", "--compute_fp32_loss")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert all(math.isfinite(h["loss"]) for h in bf16.history)
    assert [h["loss"] for h in bf16.history] == pytest.approx([h["loss"] for h in base.history], abs=0.05)


def test_fp32_loss_matches_transformers_loss():
    model = tiny_causal_lm("llama")
    ids = torch.randint(3, 300, (2, 12))
    labels = ids.clone()
    labels[:, :5] = -100  # the prompt
    out = model(input_ids=ids, labels=labels)
    torch.testing.assert_close(sft.fp32_causal_lm_loss(out.logits, labels), out.loss)
    low = sft.fp32_causal_lm_loss(out.logits.bfloat16(), labels)
    assert low.dtype == torch.float32


def test_dropout_sets_the_rates_the_config_has():
    from transformers import LlamaConfig, OPTConfig

    assert sft.configure_dropout(LlamaConfig(), None) == []
    llama = LlamaConfig()
    assert sft.configure_dropout(llama, 0.1) == ["attention_dropout"] and llama.attention_dropout == 0.1
    opt = OPTConfig()
    assert sft.configure_dropout(opt, 0.2) == ["dropout", "attention_dropout"]  # OPTConfig has no activation_dropout
    assert sft.main(["--dropout", "1.5"]) == 2


@pytest.mark.slow
def test_dropout_and_tensorboard_in_a_run(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("SFT_LESSONS_DEVICE", "cpu")
    board = tmp_path / "board"
    result = _quick(tmp_path, "--dropout", "0.25", "--enable_tensorboard", "--tensorboard_path", str(board))
    assert result.model.config.attention_dropout == 0.25
    events = list(board.glob("ds_tensorboard_logs/step1_model_tensorboard/events.out.tfevents.*"))
    assert len(events) == 1
    tags = EventAccumulator(str(events[0])).Reload().Tags()["scalars"]
    assert {"Train/Samples/train_loss", "Train/Samples/lr"} <= set(tags), tags


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max_seq_len", "0"], "--max_seq_len must be >= 8, got 0"),
        (["--test_mode", "--max_seq_len", "0"], "--max_seq_len must be >= 8, got 0"),  # test mode no longer hides it
        (["--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size must be >= 1"),
        (["--learning_rate", "0"], "--learning_rate must be a positive number"),
        (["--lora_learning_rate=-1e-3"], "--lora_learning_rate must be a positive number"),
        (["--max_steps", "0"], "--max_steps must be >= 1, or -1"),
        (["--dtype", "fp16"], "--dtype fp16 needs a GPU"),
        (["--dist_timeout", "0"], "--dist_timeout must be a positive number"),
    ],
)
def test_bad_values_stop_before_any_work(argv, message, capsys, monkeypatch):
    monkeypatch.setenv("SFT_LESSONS_DEVICE", "cpu")
    assert sft.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_paths_and_settings_are_checked_first(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    bad_json = tmp_path / "ds.json"
    bad_json.write_text("[1,")
    cases = [
        (["--output_dir", str(a_file)], f"--output_dir {a_file}: {a_file} is a file"),
        (["--output_dir", str(a_file / "sub")], "is a file, not a folder"),
        (["--output_dir", str(tmp_path / "other")], "does not hold an earlier run of this command"),
        (["--data_output_path", str(a_file)], f"--data_output_path {a_file}"),
        (["--deepspeed_config", str(bad_json)], f"--deepspeed_config {bad_json}:1: not JSON"),
        (["--deepspeed_config", str(tmp_path / "none.json")], "cannot read it"),
        (["--data_path", str(tmp_path / "missing.jsonl")], "missing.jsonl': no such file"),
        (["--data_path", "my/data"], "unknown data_path 'my/data'; valid: local/hh_sft"),
    ]
    for argv, message in cases:
        assert sft.main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
    assert sft.parse_args(["--output_dir", str(tmp_path / "other"), "--overwrite_output_dir"])
    monkeypatch.setenv("SFT_LESSONS_DEVICE", "tpu")
    assert sft.main([]) == 2
    assert "SFT_LESSONS_DEVICE='tpu'; valid: cpu, cuda, mps" in capsys.readouterr().err
    monkeypatch.setenv("SFT_LESSONS_DEVICE", "cpu")
    monkeypatch.setenv("SFT_LESSONS_CACHE", str(a_file / "cache"))
    assert sft.main([]) == 2
    assert f"SFT_LESSONS_CACHE={str(a_file / 'cache')!r}: {a_file} is a file" in capsys.readouterr().err


def test_user_deepspeed_config_is_merged(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage3_param_persistence_threshold": 0}, "gradient_clipping": 0.5}')
    args = sft.parse_args(["--zero_stage", "3", "--deepspeed_config", str(path)])
    config = sft.get_train_ds_config(args)
    assert config["zero_optimization"] == {"stage": 3, "stage3_param_persistence_threshold": 0}
    assert config["gradient_clipping"] == 0.5
    board = sft.get_train_ds_config(sft.parse_args(["--enable_tensorboard", "--tensorboard_path", "tb"]))
    assert board["tensorboard"] == {"enabled": True, "output_path": "tb/ds_tensorboard_logs/",
                                    "job_name": "step1_model_tensorboard"}  # fmt: skip


def test_upstream_option_names_exist():
    names = {a.dest for a in sft.build_parser()._actions}
    upstream = {"dropout", "compute_fp32_loss", "enable_tensorboard", "tensorboard_path", "add_eot_token",
                "print_loss", "local_rank", "deepspeed", "deepspeed_config", "sft_only_data_path",
                "per_device_eval_batch_size", "weight_decay"}  # fmt: skip
    assert upstream <= names
    assert sft.parse_args(["--eot_token", "<|im_end|>"]).end_of_conversation_token == "<|im_end|>"


RANK_FAULT = """
import os, sys, time
import deepspeed.runtime.engine as engine
from sft_lessons import sft
if os.environ["RANK"] == "1":
    def fault(self, *args, **kwargs):
        if sys.argv[1] == "die":
            raise RuntimeError("rank 1 lost its data")
        time.sleep(600)  # hang
    engine.DeepSpeedEngine.backward = fault
sys.exit(sft.main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["die", "hang"])
def test_a_failing_rank_ends_the_job(fault, tmp_path):
    script = tmp_path / "fault.py"
    script.write_text(RANK_FAULT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), fault,
           "--test_mode", "--data_output_path", str(tmp_path / "data"), "--dist_timeout", "0.2"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SFT_LESSONS_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    start = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    seconds = time.perf_counter() - start
    assert run.returncode != 0
    if fault == "die":  # torchrun stops the other rank and names the failed one
        assert "rank 1 lost its data" in run.stderr and "rank      : 1" in run.stderr
    else:  # rank 0 gives up after --dist_timeout (12 s) with one line, instead of waiting forever
        assert "error: rank 0 waited longer than --dist_timeout 0.2 min" in run.stderr
    assert seconds < 120, f"{seconds:.0f} s"


def _launch(nproc: int, argv: list[str], tmp_path) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "sft_lessons.sft", *argv]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "sft_lessons.sft", *argv]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_killed_run_resumes_to_the_same_model(nproc, tmp_path):
    import signal

    import psutil  # a dependency of accelerate
    from safetensors.torch import load_file

    env = {**os.environ, "PYTHONPATH": str(ROOT), "SFT_LESSONS_DEVICE": "cpu", "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    # two epochs of 9 (one rank) or 5 (two ranks) optimizer steps: the resumed part crosses an epoch boundary
    common = ["--test_mode", "--data_output_path", str(tmp_path / "data"), "--num_train_epochs", "2",
              "--per_device_train_batch_size", str(32 // nproc), "--max_steps", "12", "--print_loss"]  # fmt: skip
    whole = subprocess.run(_launch(nproc, [*common, "--output_dir", str(tmp_path / "whole")], tmp_path),
                           capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "killed"
    argv = [*common, "--output_dir", str(out), "--save_steps", "4"]
    job = subprocess.Popen(_launch(nproc, argv, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=env)  # fmt: skip
    latest = out / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    while job.poll() is None and time.monotonic() < deadline:
        if latest.is_file() and latest.read_text() == "step4":
            for process in [*psutil.Process(job.pid).children(recursive=True), psutil.Process(job.pid)]:
                process.send_signal(signal.SIGKILL)  # every rank and the launcher, as a lost machine would end them
            break
        time.sleep(0.005)
    job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL and not (out / "model.safetensors").exists()
    resumed = subprocess.run(_launch(nproc, [*argv, "--resume_from_checkpoint"], tmp_path),
                             capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert re.search(r"resumed from \S+step(4|8): step (4|8), epoch 1", resumed.stdout), resumed.stdout
    a, b = (json.loads((d / "history.json").read_text()) for d in (tmp_path / "whole", out))
    assert [h["loss"] for h in b["history"]] == pytest.approx([h["loss"] for h in a["history"]], abs=1e-6)
    assert [e for e, _ in b["perplexity"]] == [0, 1, 2]
    assert [p for _, p in b["perplexity"]] == pytest.approx([p for _, p in a["perplexity"]], rel=1e-6)
    wa, wb = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6


@pytest.mark.slow
def test_lora_zero3_resume_from_an_earlier_checkpoint(tmp_path, monkeypatch):
    import shutil

    from safetensors.torch import load_file

    monkeypatch.setenv("SFT_LESSONS_DEVICE", "cpu")
    argv = ["--test_mode", "--data_output_path", str(tmp_path / "data"), "--save_steps", "2", "--max_steps", "6",
            "--lora_dim", "4", "--only_optimize_lora", "--lora_learning_rate", "1e-2", "--zero_stage", "3"]  # fmt: skip
    whole = tmp_path / "whole"
    first = sft.train_sft(sft.parse_args([*argv, "--output_dir", str(whole), "--save_total_limit", "2"]),
                          log=lambda *a: None)  # fmt: skip
    assert sorted(d.name for d in (whole / "checkpoints").glob("step*")) == ["step4", "step6"]  # the newest 2
    again = tmp_path / "again"
    (again / "checkpoints").mkdir(parents=True)
    sft.train_sft(sft.parse_args([*argv, "--output_dir", str(tmp_path / "ref")]), log=lambda *a: None)
    shutil.copytree(tmp_path / "ref" / "checkpoints" / "step2", again / "checkpoints" / "step2")
    # the frozen weights are not in the checkpoint: the resumed run rebuilds them from the model it starts from
    resumed = sft.train_sft(sft.parse_args([*argv, "--output_dir", str(again), "--resume_from_checkpoint",
                                            str(again / "checkpoints" / "step2")]), log=lambda *a: None)  # fmt: skip
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in first.history], abs=1e-6)
    a, b = load_file(whole / "model.safetensors"), load_file(again / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


@pytest.mark.slow
def test_deepspeed_launcher_starts_two_cpu_ranks(tmp_path):
    out = tmp_path / "model"
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--module", "sft_lessons.sft",
           "--test_mode", "--zero_stage", "2", "--max_steps", "2", "--data_output_path", str(tmp_path / "data"),
           "--output_dir", str(out)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in sft.LAUNCH_VARIABLES}
    env.update(PYTHONPATH=str(ROOT), SFT_LESSONS_DEVICE="cpu", OMP_NUM_THREADS="1")
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("saved a Hugging Face checkpoint") == 1  # rank 0 only
    history = json.loads((out / "history.json").read_text())
    assert history["world_size"] == 2 and len(history["history"]) == 2
