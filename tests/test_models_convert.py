"""Checkpoint conversion: OpenAI / Long-CLIP / open_clip / HF layouts against PyTorch references."""
import functools
import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import _torch_refs as refs  # tests/ is on sys.path under pytest.
from _cli import run_command
from goal_jax import convert as convert_cli
from goal_jax.models import checkpoint
from goal_jax.models import clip
from goal_jax.models import state_dicts
from goal_jax.models import positions

HEADS = dict(vision_heads=4, text_heads=2)  # Tiny widths break OpenAI's width // 64 rule.


def _convert_command(source, out, *args) -> None:
  """`python -m goal_jax.convert --source=SOURCE --out=OUT ARGS`, which must succeed."""
  assert run_command(convert_cli, f"--source={source}", f"--out={out}", *args) == 0


def _refusal(capsys, source, out, *args) -> str:
  """The `error:` line of a conversion the command refuses (exit 1)."""
  capsys.readouterr()
  assert run_command(convert_cli, f"--source={source}", f"--out={out}", *args) == 1
  return capsys.readouterr().err.strip().splitlines()[-1]


@functools.partial(jax.jit, static_argnums=0)
def _forward(config, params, images, ids):
  return clip.CLIP(config).apply({"params": params}, images, ids)


def _reference(model, images, ids):
  with torch.no_grad():
    image_tokens, image_embedding = model.visual(refs.to_nchw(images))
    text_tokens, text_embedding = model.encode_text(torch.from_numpy(ids).long())
  normalize = lambda x: (x / x.norm(dim=-1, keepdim=True)).numpy()
  return (dict(tokens=image_tokens.numpy(), embedding=normalize(image_embedding)),
          dict(tokens=text_tokens.numpy(), embedding=normalize(text_embedding)))


def _assert_matches(params, config, model, context=77, atol=1e-5):
  images, ids = refs.random_inputs(2, 32, context, seed=3, lengths=[context, 12])
  got = _forward(config, params, images, ids)
  for got_tower, want_tower in zip(got, _reference(model, images, ids)):
    for key, want in want_tower.items():
      np.testing.assert_allclose(got_tower[key], want, atol=atol, err_msg=key)


def _assert_same_params(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def _state(model):
  return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def openai_model():
  torch.manual_seed(0)
  return refs.OpenAIStyleCLIP().eval()


def test_openai_checkpoint_matches_torch_reference(tmp_path, openai_model):
  state = _state(openai_model)
  # Buffers found in OpenAI's archives and open_clip files are dropped.
  state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77),
               vocab_size=torch.tensor(49408), attn_mask=torch.zeros(77, 77))
  torch.save(state, tmp_path / "model.pt")
  params, config = state_dicts.convert(f"openai:{tmp_path / 'model.pt'}", **HEADS)
  assert config == clip.get_model_config("tiny/8")
  _assert_matches(params, config, openai_model)


def test_open_clip_files_convert_like_openai(tmp_path, openai_model):
  state = _state(openai_model)
  torch.save(state, tmp_path / "plain.pt")
  torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}},
             tmp_path / "wrapped.pt")
  save_file(state, str(tmp_path / "model.safetensors"))
  want, _ = state_dicts.convert(f"openai:{tmp_path / 'plain.pt'}", **HEADS)
  for name in ("wrapped.pt", "model.safetensors"):
    got, _ = state_dicts.convert(f"open_clip:{tmp_path / name}", **HEADS)
    _assert_same_params(got, want)


def test_torchscript_archive_is_read_without_pickle(tmp_path, openai_model):
  ids = torch.from_numpy(refs.random_inputs(1, 32, 77)[1]).long()
  traced = torch.jit.trace_module(openai_model, {"encode_text": ids}, check_trace=False)
  assert len(traced.state_dict()) == len(openai_model.state_dict())  # Visual tower included.
  traced.save(str(tmp_path / "jit.pt"))
  want, _ = state_dicts.convert(f"openai:{tmp_path / 'jit.pt'}", **HEADS)
  torch.save(_state(openai_model), tmp_path / "plain.pt")
  _assert_same_params(want, state_dicts.convert(f"openai:{tmp_path / 'plain.pt'}", **HEADS)[0])


def _hf_to_openai(hf_state):
  """Test-local inverse key mapping (HF CLIPModel -> OpenAI), written from the two key tables."""
  renames = [("vision_model.", "visual."), ("text_model.", ""), ("embeddings.", ""),
             ("patch_embedding", "conv1"), ("position_embedding.weight", "positional_embedding"),
             ("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post"),
             ("final_layer_norm", "ln_final"), ("encoder.layers", "transformer.resblocks"),
             ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
             ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj")]
  out = {}
  for key, value in hf_state.items():
    if key.endswith("position_ids"):
      continue
    if key in ("visual_projection.weight", "text_projection.weight"):
      out["visual.proj" if key.startswith("visual") else "text_projection"] = value.T.contiguous()
      continue
    if "self_attn.q_proj" in key:
      kind = key.rsplit(".", 1)[1]
      prefix = key.split("self_attn")[0]
      key = f"{prefix}attn.in_proj_{kind}"
      value = torch.cat([hf_state[f"{prefix}self_attn.{p}_proj.{kind}"] for p in "qkv"])
    elif "self_attn.k_proj" in key or "self_attn.v_proj" in key:
      continue
    for old, new in renames:
      key = key.replace(old, new)
    out[key] = value
  return out


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("hf") / "clip"
  refs.hf_clip(**HEADS).save_pretrained(path)
  return path


def test_hf_and_openai_layouts_agree(tmp_path, hf_dir):
  from transformers import CLIPModel
  hf_state = {k: v.clone() for k, v in CLIPModel.from_pretrained(hf_dir).state_dict().items()}
  torch.save(_hf_to_openai(hf_state), tmp_path / "openai.pt")
  from_hf, hf_config = state_dicts.convert(f"hf:{hf_dir}")
  from_openai, openai_config = state_dicts.convert(f"openai:{tmp_path / 'openai.pt'}", **HEADS)
  assert hf_config == openai_config
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=0), from_hf, from_openai)


def test_longclip_residual_table_is_merged(tmp_path):
  torch.manual_seed(1)
  model = refs.OpenAIStyleCLIP(context=248, longclip=True).eval()
  torch.save(_state(model), tmp_path / "longclip.pt")
  params, config = state_dicts.convert(f"openai:{tmp_path / 'longclip.pt'}", **HEADS)
  assert config.context_length == 248
  table = params["text"]["positional_embedding"]
  np.testing.assert_array_equal(table[:20], model.positional_embedding.detach()[:20])
  np.testing.assert_array_equal(table[20:], model.positional_embedding_res.detach()[20:])
  _assert_matches(params, config, model, context=248)


def test_cli_stretches_and_scans(tmp_path, hf_dir):
  from transformers import CLIPModel
  _convert_command(f"hf:{hf_dir}", tmp_path / "ckpt", "--text_context=248", "--scan")
  params, config = checkpoint.load_model(tmp_path / "ckpt")
  assert (config.context_length, config.scan) == (248, True)
  hf = CLIPModel.from_pretrained(hf_dir).eval()
  hf_table = hf.text_model.embeddings.position_embedding.weight.detach().numpy()
  np.testing.assert_allclose(params["text"]["positional_embedding"],
                             positions.stretch_positions(hf_table, 248), atol=1e-7)
  # Rows < 20 are unchanged, so with causal attention a caption ending before 20 embeds as before.
  _, ids = refs.random_inputs(2, 32, 248, seed=4, lengths=[19, 5])
  text = _forward(config, params, np.zeros((2, 32, 32, 3), np.float32), ids)[1]
  with torch.no_grad():
    want = hf.get_text_features(input_ids=torch.from_numpy(ids[:, :77]).long()).pooler_output
  np.testing.assert_allclose(text["embedding"], torch.nn.functional.normalize(want).numpy(),
                             atol=1e-5)


def test_hf_activation_comes_from_config(tmp_path):
  model = refs.hf_clip(act="gelu", seed=2)
  model.save_pretrained(tmp_path / "gelu")
  params, config = state_dicts.convert(f"hf:{tmp_path / 'gelu'}")
  assert config.activation == "gelu"
  images, ids = refs.random_inputs(2, 32, 77, seed=5)
  image_out, text_out = _forward(config, params, images, ids)
  with torch.no_grad():
    want = model.get_text_features(input_ids=torch.from_numpy(ids).long()).pooler_output
  np.testing.assert_allclose(text_out["embedding"], torch.nn.functional.normalize(want).numpy(),
                             atol=1e-5)


# --- Bad input: each error names the problem.

def _convert_state(tmp_path, state, **kw):
  torch.save(state, tmp_path / "bad.pt")
  return state_dicts.convert(f"openai:{tmp_path / 'bad.pt'}", **{**HEADS, **kw})


def test_strict_keys_and_shapes(tmp_path, openai_model):
  state = _state(openai_model)
  with pytest.raises(ValueError, match=r"missing keys \['visual.ln_post.bias'\]"):
    _convert_state(tmp_path, {k: v for k, v in state.items() if k != "visual.ln_post.bias"})
  fused = "transformer.resblocks.1.attn.in_proj_weight"
  with pytest.raises(ValueError, match=rf"missing keys \['{fused}'\]"):
    _convert_state(tmp_path, {k: v for k, v in state.items() if k != fused})
  with pytest.raises(ValueError, match=r"unexpected keys \['visual.extra_head.weight'\]"):
    _convert_state(tmp_path, {**state, "visual.extra_head.weight": torch.zeros(3)})
  with pytest.raises(ValueError, match=r"'ln_final.weight' has shape \(33,\), expected \(32,\)"):
    _convert_state(tmp_path, {**state, "ln_final.weight": torch.zeros(33)})
  with pytest.raises(ValueError, match=r"'visual.transformer.resblocks.0.attn.out_proj.weight' "
                     r"has shape \(64, 60\), expected \(64, 64\)"):
    _convert_state(tmp_path, {**state, "visual.transformer.resblocks.0.attn.out_proj.weight":
                              torch.zeros(64, 60)})
  with pytest.raises(ValueError, match="cannot infer the model config: missing 'token_embedding"):
    _convert_state(tmp_path, {k: v for k, v in state.items() if k != "token_embedding.weight"})
  with pytest.raises(ValueError, match="vision_width 64 is not divisible by vision_heads 3"):
    _convert_state(tmp_path, state, vision_heads=3)


def test_hf_dir_errors_name_keys(tmp_path, hf_dir):
  from safetensors.numpy import load_file, save_file as save_numpy
  bad = tmp_path / "bad_hf"
  bad.mkdir()
  (bad / "config.json").write_text((hf_dir / "config.json").read_text())
  state = load_file(str(hf_dir / "model.safetensors"))
  del state["text_model.encoder.layers.1.mlp.fc2.bias"]
  save_numpy(state, str(bad / "model.safetensors"))
  missing = "text_model.encoder.layers.1.mlp.fc2.bias"
  with pytest.raises(ValueError, match=rf"missing keys \['{missing}'\]"):
    state_dicts.convert(f"hf:{bad}")
  os.remove(bad / "config.json")
  with pytest.raises(FileNotFoundError, match="no config.json"):
    state_dicts.convert(f"hf:{bad}")


def test_bad_sources_and_files(tmp_path, openai_model):
  with pytest.raises(ValueError, match="unknown checkpoint source 'tf:x.ckpt'"):
    state_dicts.convert("tf:x.ckpt")
  with pytest.raises(FileNotFoundError, match="no such checkpoint file: .*absent.pt"):
    state_dicts.convert(f"openai:{tmp_path / 'absent.pt'}")
  (tmp_path / "junk.pt").write_bytes(os.urandom(256))
  with pytest.raises(ValueError, match="cannot read .*junk.pt as a PyTorch checkpoint"):
    state_dicts.convert(f"openai:{tmp_path / 'junk.pt'}")
  torch.save(_state(openai_model), tmp_path / "whole.pt")
  data = (tmp_path / "whole.pt").read_bytes()
  (tmp_path / "truncated.pt").write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match="cannot read .*truncated.pt as a PyTorch checkpoint"):
    state_dicts.convert(f"openai:{tmp_path / 'truncated.pt'}")
  (tmp_path / "junk.safetensors").write_bytes(os.urandom(256))
  with pytest.raises(ValueError, match="cannot read .*junk.safetensors as safetensors"):
    state_dicts.convert(f"open_clip:{tmp_path / 'junk.safetensors'}")
  # Arbitrary pickled objects are refused (weights_only), not executed.
  torch.save({"model": refs.QuickGELU()}, tmp_path / "pickled.pt")
  with pytest.raises(ValueError, match="cannot read .*pickled.pt as a PyTorch checkpoint") as e:
    state_dicts.convert(f"openai:{tmp_path / 'pickled.pt'}")
  # One line, and never torch's advice to retry with weights_only=False (it runs the pickle).
  message = str(e.value)
  assert "\n" not in message and "False" not in message and "weights_only" not in message
  assert message.endswith("it is not a weights file (or holds pickled objects): convert from "
                          "the model's .safetensors, or a state dict saved with "
                          "torch.save(model.state_dict())")
  torch.save([torch.zeros(2)], tmp_path / "list.pt")
  with pytest.raises(ValueError, match="list.pt: expected a state dict, found a list"):
    state_dicts.convert(f"openai:{tmp_path / 'list.pt'}")


# --- Layer counts: inferred from the weights, checked against what the source states.

def _without(state, prefix):
  kept = {k: v for k, v in state.items() if not k.startswith(prefix)}
  assert len(kept) < len(state)
  return kept


def _hf_copy(hf_dir, tmp_path, edit_config=None, drop=None):
  """A copy of the HF fixture with config.json edited and/or weights under `drop` removed."""
  from safetensors.numpy import load_file, save_file as save_numpy
  out = tmp_path / "hf_copy"
  shutil.copytree(hf_dir, out)
  if edit_config:
    config = json.loads((out / "config.json").read_text())
    edit_config(config)
    (out / "config.json").write_text(json.dumps(config))
  if drop:
    state = load_file(str(out / "model.safetensors"))
    save_numpy(_without(state, drop), str(out / "model.safetensors"))
  return out


def test_missing_last_text_layer_is_an_error(tmp_path, openai_model, hf_dir):
  state = _state(openai_model)  # 2 text layers
  # The complete file matches its variant.
  assert _convert_state(tmp_path, state, variant="tiny/8")[1] == clip.get_model_config("tiny/8")
  # An OpenAI file states no layer count; the named variant does.
  with pytest.raises(ValueError, match=re.escape(
      f"{tmp_path / 'bad.pt'}: text layer 1 of 2 has no weights (transformer.resblocks.1.*); "
      "variant 'tiny/8' has text_layers=2. Fix: ")):
    _convert_state(tmp_path, _without(state, "transformer.resblocks.1."), variant="tiny/8")
  with pytest.raises(ValueError, match=r"bad.pt: the weights give embed_dim=32 but variant 'demo' "
                     r"has embed_dim=64; .* Fix: use the config \(or variant\)"):
    _convert_state(tmp_path, state, variant="demo")  # another model, not a cut one
  # An HF directory states it in config.json.
  bad = _hf_copy(hf_dir, tmp_path, drop="text_model.encoder.layers.1.")
  with pytest.raises(ValueError, match=re.escape(
      f"{bad / 'model.safetensors'}: text layer 1 of 2 has no weights "
      f"(text_model.encoder.layers.1.*); {bad / 'config.json'} says "
      "text_config.num_hidden_layers=2. Fix: the weights and config.json disagree")):
    state_dicts.convert(f"hf:{bad}")


def test_hf_config_must_match_the_weights(tmp_path, hf_dir):
  def set_text(key, value):
    return lambda config: config["text_config"].__setitem__(key, value)

  more = _hf_copy(hf_dir, tmp_path / "more", set_text("num_hidden_layers", 3))
  with pytest.raises(ValueError, match=re.escape(
      "text layer 2 of 3 has no weights (text_model.encoder.layers.2.*); "
      f"{more / 'config.json'} says text_config.num_hidden_layers=3")):
    state_dicts.convert(f"hf:{more}")
  fewer = _hf_copy(hf_dir, tmp_path / "fewer", set_text("num_hidden_layers", 1))
  with pytest.raises(ValueError, match=re.escape(
      "text layer 1 has weights (text_model.encoder.layers.1.*) but "
      f"{fewer / 'config.json'} says text_config.num_hidden_layers=1")):
    state_dicts.convert(f"hf:{fewer}")
  wider = _hf_copy(hf_dir, tmp_path / "wider", set_text("hidden_size", 48))
  with pytest.raises(ValueError, match=re.escape(
      f"the weights give text_width=32 but {wider / 'config.json'} says "
      "text_config.hidden_size=48")):
    state_dicts.convert(f"hf:{wider}")
  # A field config.json leaves out has transformers' default (12 layers).
  default = _hf_copy(hf_dir, tmp_path / "default",
                     lambda config: config["vision_config"].pop("num_hidden_layers"))
  with pytest.raises(ValueError, match=re.escape(
      "vision layer 2 of 12 has no weights (vision_model.encoder.layers.2.*), nor layers 3, 4, "
      "5, 6, 7, 8, 9, 10, 11; ") + ".*num_hidden_layers \\(transformers' default\\)=12"):
    state_dicts.convert(f"hf:{default}")


def test_layer_gap_is_an_error(tmp_path):
  torch.manual_seed(4)
  state = _state(refs.OpenAIStyleCLIP(t_layers=3, v_layers=3).eval())
  with pytest.raises(ValueError, match=re.escape(
      f"{tmp_path / 'bad.pt'}: text layer 1 of 3 has no weights (transformer.resblocks.1.*) "
      "although layer 2 has. Fix: the file is incomplete")):
    _convert_state(tmp_path, _without(state, "transformer.resblocks.1."))
  with pytest.raises(ValueError, match=re.escape(
      "vision layer 0 of 3 has no weights (visual.transformer.resblocks.0.*) although layer 2 "
      "has; text layer 1 of 3")):
    _convert_state(tmp_path, _without(_without(state, "visual.transformer.resblocks.0."),
                                      "transformer.resblocks.1."))
  with pytest.raises(ValueError, match=re.escape(
      "the text tower has no layers (transformer.resblocks.0.*)")):
    _convert_state(tmp_path, _without(state, "transformer.resblocks."))


def test_key_errors_name_the_file_and_the_fix(tmp_path, openai_model):
  state = _state(openai_model)
  with pytest.raises(ValueError, match=re.escape(
      f"{tmp_path / 'bad.pt'}: checkpoint does not match the CLIP model (vision 2x64, text 2x32, "
      "embed 32): missing keys ['ln_final.bias']. Fix: missing keys mean an incomplete file")):
    _convert_state(tmp_path, {k: v for k, v in state.items() if k != "ln_final.bias"})
  with pytest.raises(ValueError, match=r"unexpected keys \['extra.weight'\]\. Fix: unexpected "
                     r"keys mean another architecture"):
    _convert_state(tmp_path, {**state, "extra.weight": torch.zeros(2)})


# --- The command: bare sources, the output rule, one-line errors.

def test_cli_takes_a_bare_hf_directory_or_weights_file(tmp_path, hf_dir, openai_model):
  """A directory with config.json is HF; a bare file is the OpenAI/open_clip layout (one reader)."""
  _convert_command(hf_dir, tmp_path / "bare")
  want, want_config = state_dicts.convert(f"hf:{hf_dir}")
  got, got_config = checkpoint.load_model(tmp_path / "bare")
  assert got_config == want_config
  _assert_same_params(got, want)
  torch.save(_state(openai_model), tmp_path / "model.pt")
  save_file(_state(openai_model), str(tmp_path / "open_clip.safetensors"))
  want, _ = state_dicts.convert(f"openai:{tmp_path / 'model.pt'}", **HEADS)
  for name in ("model.pt", "open_clip.safetensors"):
    _convert_command(tmp_path / name, tmp_path / f"from_{name}", "--vision_heads=4",
                     "--text_heads=2")
    _assert_same_params(checkpoint.load_model(tmp_path / f"from_{name}")[0], want)


def test_cli_refuses_ambiguous_or_wrong_sources(tmp_path, hf_dir, capsys):
  weights = hf_dir / "model.safetensors"
  assert _refusal(capsys, weights, tmp_path / "out") == (
      f"error: {weights} is the weights file of the HF model directory {hf_dir}; "
      "pass the directory")
  (tmp_path / "empty").mkdir()
  assert re.match(r"^error: .*empty is a directory without config.json",
                  _refusal(capsys, tmp_path / "empty", tmp_path / "out"))
  assert re.match(r"^error: no such file or directory: .*absent",
                  _refusal(capsys, tmp_path / "absent", tmp_path / "out"))
  _convert_command(hf_dir, tmp_path / "ckpt")
  assert re.match(r"^error: .*ckpt is already a goal_jax model checkpoint",
                  _refusal(capsys, tmp_path / "ckpt", tmp_path / "out"))
  assert re.match(r"^error: the output .* is the source",
                  _refusal(capsys, hf_dir, hf_dir, "--overwrite"))
  assert not (tmp_path / "out").exists()


def test_cli_checks_the_output_first_and_overwrites_on_request(tmp_path, hf_dir, monkeypatch,
                                                               capsys):
  out = tmp_path / "ckpt"
  out.mkdir()
  (out / "stale.txt").write_text("from an earlier run")
  calls = []
  real_convert = state_dicts.convert
  monkeypatch.setattr(state_dicts, "convert",
                      lambda *a, **k: calls.append(a) or real_convert(*a, **k))
  assert _refusal(capsys, hf_dir, out) == (
      f"error: output {out} is not empty; pass --overwrite to replace it")
  assert not calls  # refused before reading a single weight
  _convert_command(hf_dir, out, "--overwrite", "--text_context=96")
  assert len(calls) == 1 and sorted(os.listdir(out)) == ["model_config.json", "params"]
  assert checkpoint.load_config(out).context_length == 96
  assert capsys.readouterr().out.startswith(f"wrote {out}: ")
  (tmp_path / "file").write_text("")
  assert re.match(r"^error: output .*file exists and is not a directory$",
                  _refusal(capsys, hf_dir, tmp_path / "file", "--overwrite"))


def test_cli_errors_are_one_line_without_traceback(tmp_path, openai_model):
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  state = {k: v for k, v in _state(openai_model).items() if k != "ln_final.bias"}
  torch.save(state, tmp_path / "bad.pt")
  result = subprocess.run([sys.executable, "-m", "goal_jax.convert",
                           f"--source={tmp_path / 'bad.pt'}", f"--out={tmp_path / 'out'}",
                           "--vision_heads=4", "--text_heads=2"],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 1 and "Traceback" not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'bad.pt'}: checkpoint does "
                                                 "not match the CLIP model")
  assert "missing keys ['ln_final.bias']" in lines[0] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, code, message", [
    (["--source=SOURCE", "--out=OUT", "--txt_context=248"], 2,
     "error: Unknown command line flag 'txt_context'. Did you mean: text_context ? "
     "(--help lists the flags)"),
    (["SOURCE", "OUT"], 2,
     "error: unexpected arguments ['SOURCE', 'OUT']: pass --source=... --out=..."),
    (["--out=OUT"], 2, "error: --source is required (--help lists the flags)"),
    (["--source=SOURCE", "--out=OUT"], 1,
     "error: no such file or directory: SOURCE (expected an HF model directory or a "
     ".pt/.bin/.safetensors file)"),
])
def test_cli_mistakes_as_a_user_types_them(tmp_path, args, code, message):
  """A wrong flag, the old positional form, a missing flag or file: one `error:` line."""
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  names = {"SOURCE": str(tmp_path / "absent.pt"), "OUT": str(tmp_path / "out")}
  argv = [a.replace("SOURCE", names["SOURCE"]).replace("OUT", names["OUT"]) for a in args]
  result = subprocess.run([sys.executable, "-m", "goal_jax.convert", *argv], capture_output=True,
                          text=True, check=False, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert (result.returncode, result.stderr.strip().splitlines()) == (
      code, [message.replace("SOURCE", names["SOURCE"]).replace("OUT", names["OUT"])])
