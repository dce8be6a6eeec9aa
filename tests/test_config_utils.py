"""parse_arg: the `:arg` suffix of `--config file.py:arg` into typed fields."""
import pytest

from goal_jax.config_utils import parse_arg


def test_defaults_when_empty():
  for arg in (None, "", " , "):
    c = parse_arg(arg, demo=False, batch=16, variant="B/16", lr=5e-6)
    assert c.to_dict() == {"demo": False, "batch": 16, "variant": "B/16", "lr": 5e-6}


def test_flag_and_typed_values():
  c = parse_arg("demo,batch=8,variant=L/14,lr=1e-5", demo=False, batch=16, variant="B/16", lr=5e-6)
  assert c.demo is True
  assert c.batch == 8 and type(c.batch) is int
  assert c.variant == "L/14"
  assert c.lr == 1e-5 and type(c.lr) is float


def test_float_default_accepts_integer_text():
  assert type(parse_arg("lr=1", lr=0.5).lr) is float


def test_bool_spellings():
  assert parse_arg("demo=false", demo=True).demo is False
  assert parse_arg("demo=Yes", demo=False).demo is True
  assert parse_arg("demo=0", demo=True).demo is False
  with pytest.raises(ValueError, match="demo='maybe'.*boolean"):
    parse_arg("demo=maybe", demo=False)


def test_unknown_key_is_an_error_unless_lazy():
  with pytest.raises(ValueError, match="unknown field 'bacth'.*batch"):
    parse_arg("bacth=8", batch=16)
  c = parse_arg("steps=10,scale=0.5,name=x,flag,off=false", lazy=True, batch=16)
  assert c.to_dict() == {"batch": 16, "steps": 10, "scale": 0.5, "name": "x", "flag": True,
                         "off": False}


def test_bad_values_name_the_field():
  with pytest.raises(ValueError, match="batch='eight': expected int"):
    parse_arg("batch=eight", batch=16)
  with pytest.raises(ValueError, match="'batch' needs a value"):
    parse_arg("batch", batch=16)
  with pytest.raises(ValueError, match="not a valid field name"):
    parse_arg("a-b=1", lazy=True)


def test_none_default_is_inferred():
  assert parse_arg("init=ckpts/b16", init=None).init == "ckpts/b16"
  assert parse_arg("seed=3", seed=None).seed == 3
