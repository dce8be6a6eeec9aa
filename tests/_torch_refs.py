"""Independent PyTorch references for the model tests (tests only; the package never imports torch).

`OpenAIStyleCLIP` is a small CLIP with the OpenAI module layout (fused `in_proj` attention via
`nn.MultiheadAttention`, `c_fc`/`c_proj`, raw `proj`/`text_projection` params) written from the
architecture description, optionally with Long-CLIP's two text position tables. `hf_clip` builds a
random-init `transformers.CLIPModel`.
"""
import collections

import numpy as np
import torch
from torch import nn

EOT = 49407


class QuickGELU(nn.Module):

  def forward(self, x):
    return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):

  def __init__(self, width, heads, mlp_dim):
    super().__init__()
    self.ln_1 = nn.LayerNorm(width)
    self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
    self.ln_2 = nn.LayerNorm(width)
    self.mlp = nn.Sequential(collections.OrderedDict(
        c_fc=nn.Linear(width, mlp_dim), gelu=QuickGELU(), c_proj=nn.Linear(mlp_dim, width)))

  def forward(self, x, mask=None):
    y = self.ln_1(x)
    x = x + self.attn(y, y, y, attn_mask=mask, need_weights=False)[0]
    return x + self.mlp(self.ln_2(x))


class Stack(nn.Module):

  def __init__(self, width, layers, heads, mlp_dim):
    super().__init__()
    self.resblocks = nn.ModuleList(Block(width, heads, mlp_dim) for _ in range(layers))

  def forward(self, x, mask=None):
    for block in self.resblocks:
      x = block(x, mask)
    return x


class Visual(nn.Module):

  def __init__(self, image, patch, width, layers, heads, mlp_dim, embed):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
    self.class_embedding = nn.Parameter(torch.randn(width) * 0.1)
    self.positional_embedding = nn.Parameter(torch.randn((image // patch) ** 2 + 1, width) * 0.1)
    self.ln_pre = nn.LayerNorm(width)
    self.transformer = Stack(width, layers, heads, mlp_dim)
    self.ln_post = nn.LayerNorm(width)
    self.proj = nn.Parameter(torch.randn(width, embed) * width ** -0.5)

  def forward(self, images):
    """images NCHW -> (pre-LN tokens, pooled embedding before normalisation)."""
    x = self.conv1(images).flatten(2).transpose(1, 2)
    cls = self.class_embedding.expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + self.positional_embedding
    tokens = self.transformer(self.ln_pre(x))
    return tokens, self.ln_post(tokens[:, 0]) @ self.proj


class OpenAIStyleCLIP(nn.Module):
  """OpenAI key layout; `longclip=True` adds `positional_embedding_res` (Long-CLIP, keep 20)."""

  def __init__(self, embed=32, image=32, patch=8, v_width=64, v_layers=2, v_heads=4, t_width=32,
               t_layers=2, t_heads=2, context=77, vocab=49408, longclip=False):
    super().__init__()
    self.visual = Visual(image, patch, v_width, v_layers, v_heads, 4 * v_width, embed)
    self.token_embedding = nn.Embedding(vocab, t_width)
    self.positional_embedding = nn.Parameter(torch.randn(context, t_width) * 0.1)
    if longclip:
      self.positional_embedding_res = nn.Parameter(torch.randn(context, t_width) * 0.1)
    self.transformer = Stack(t_width, t_layers, t_heads, 4 * t_width)
    self.ln_final = nn.LayerNorm(t_width)
    self.text_projection = nn.Parameter(torch.randn(t_width, embed) * t_width ** -0.5)
    self.logit_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    self.longclip = longclip
    with torch.no_grad():  # Non-trivial LayerNorm and bias values.
      for p in self.parameters():
        if p.ndim == 1 and p is not self.visual.class_embedding:
          p.normal_(float(p.mean()), 0.1)

  def text_positions(self, length):
    table = self.positional_embedding[:length]
    if not self.longclip:
      return table
    mask = (torch.arange(length) < 20).float()[:, None]
    return table * mask + self.positional_embedding_res[:length] * (1 - mask)

  def encode_text(self, ids):
    """ids [B, L] -> (pre-LN tokens, pooled embedding before normalisation)."""
    length = ids.shape[1]
    x = self.token_embedding(ids) + self.text_positions(length)
    causal = torch.full((length, length), float("-inf")).triu(1)
    tokens = self.transformer(x, causal)
    pooled = self.ln_final(tokens)[torch.arange(ids.shape[0]), ids.argmax(-1)]
    return tokens, pooled @ self.text_projection


def hf_clip(*, vision_width=64, vision_layers=2, vision_heads=4, text_width=32, text_layers=2,
            text_heads=2, embed=32, image=32, patch=8, context=77, act="quick_gelu", seed=0):
  """Random-init HF CLIPModel (eval mode, eager attention) with non-trivial LN/bias values."""
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  config = transformers.CLIPConfig(
      text_config=dict(hidden_size=text_width, intermediate_size=4 * text_width,
                       num_hidden_layers=text_layers, num_attention_heads=text_heads,
                       max_position_embeddings=context, hidden_act=act, vocab_size=49408,
                       eos_token_id=EOT, bos_token_id=49406),
      vision_config=dict(hidden_size=vision_width, intermediate_size=4 * vision_width,
                         num_hidden_layers=vision_layers, num_attention_heads=vision_heads,
                         image_size=image, patch_size=patch, hidden_act=act),
      projection_dim=embed)
  model = transformers.CLIPModel(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1 and "class_embedding" not in name:
        p.normal_(float(p.mean()), 0.1)
    model.logit_scale.fill_(3.1)
  return model


def random_inputs(batch, image, context, seed=0, lengths=None):
  """NHWC float images and 0-padded ids: SOT, random tokens, EOT at varied positions."""
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(batch, image, image, 3)).astype(np.float32)
  ids = np.zeros((batch, context), np.int32)
  lengths = lengths or [int(rng.integers(3, context + 1)) for _ in range(batch)]
  for row, n in enumerate(lengths):
    ids[row, 0] = 49406
    ids[row, 1:n - 1] = rng.integers(1, 49405, size=n - 2)
    ids[row, n - 1] = EOT
  return images, ids


def to_nchw(images):
  return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def random_params(abstract, seed=0):
  """Numpy random params shaped like `abstract` (cheap: compiling `init` costs ~10 s on CPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  leaves, treedef = jax.tree.flatten(abstract)
  scale = lambda shape: 0.3 if len(shape) <= 1 else np.prod(shape[:-1]) ** -0.5  # 1/sqrt(fan-in)
  values = [(rng.normal(size=x.shape) * scale(x.shape)).astype(np.float32) for x in leaves]
  return jax.tree.unflatten(treedef, values)
