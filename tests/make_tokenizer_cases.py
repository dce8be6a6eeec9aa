"""Regenerate tests/data/tokenizer_cases.json, the committed CLIP-tokenizer reference table.

The reference is HF `transformers.CLIPTokenizer`, built here from vocab/merges derived from the
vendored `.gz` independently of `goal_jax.text.tokenizer` (the GPT-2 style byte table, in
OpenAI's dict order), and fed OpenAI's full cleaning: ftfy, double `html.unescape`, whitespace,
lowercase. HF does no `html.unescape`, and its Rust lowercasing has no Greek final-sigma rule
(Python's `str.lower`, which OpenAI uses, does), so we lowercase before HF.

  python tests/make_tokenizer_cases.py            # rewrites the table
  python tests/make_tokenizer_cases.py --check    # exits 1 if the table is stale
"""
import gzip
import html
import json
import os
import sys

import ftfy
import regex

HERE = os.path.dirname(os.path.abspath(__file__))
TABLE_PATH = os.path.join(HERE, "data", "tokenizer_cases.json")
GZ_PATH = os.path.join(HERE, os.pardir, "goal_jax", "text", "bpe_simple_vocab_16e6.txt.gz")
CONTEXT_LENGTHS = (77, 248)

LONG_SENTENCES = [
    "A tall red-brick building with white-framed windows stands on a quiet corner.",
    "Its ground floor holds a café whose green awning reads \u201cBREAD & CO.\u201d in gold "
    "letters.",
    "Two bicycles lean against a black iron railing, one of them with a wicker basket.",
    "A woman in a yellow raincoat crosses the street, holding a folded umbrella in her left "
    "hand.",
    "The sky is overcast and the pavement is wet, reflecting the lights of the shop.",
    "A sign on the lamppost says \"NO PARKING 8AM\u20136PM\" and a smaller one reads 3.5 t "
    "max.",
    "On the far right, a delivery van is partly cut off by the edge of the image.",
    "Potted plants (roughly 1.2 m tall) flank the entrance; their leaves are dark green.",
    "Above the door, a clock shows 10:45, and a banner says \u2018OPEN\u2019 in capital "
    "letters\u2026",
    "In the background, a church spire rises above the rooftops, partly hidden by mist.",
]

CASES = [
    "A photo of a cat.",
    "Hello   world!\tTabs\nand newlines\r\nhere  ",
    "Cr\u00e8me br\u00fbl\u00e9e at the caf\u00e9 in S\u00e3o Paulo; na\u00efve fa\u00e7ade, "
    "\u00c5ngstr\u00f6m.",
    "The caf\u00c3\u00a9 is open",  # Mojibake that ftfy repairs.
    "\u4e00\u53ea\u732b\u5750\u5728\u7a97\u53f0\u4e0a\u3002"  # CJK.
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3001\ud55c\uad6d\uc5b4 \ubb38\uc7a5.",
    "A dog \U0001f415 with pizza \U0001f355, a family \U0001f468\u200d\U0001f469\u200d\U0001f467, "
    "a flag \U0001f1ef\U0001f1f5 and \U0001f44d\U0001f3fd!",
    "Tom &amp; Jerry said &quot;hi&quot; and it&#39;s fine &lt;3",
    "Double escaped: &amp;amp; &amp;quot;quoted&amp;quot; &amp;#39;apostrophe&amp;#39; "
    "&amp;lt;b&amp;gt;",
    "She said \u201chello\u201d and \u2018goodbye\u2019 \u2014 it\u2019s fine",
    "Wait\u2026 what... okay.",
    "It costs $3.50, weighs 12.75 kg, 1,000,000 people, 3rd place, 2024-05-01, 50% off, "
    "-7.25\u00b0C.",
    "IT'S THE DOG'S BALL; they've we'll I'm you'd DON'T",
    "\uff21\uff22\uff23 \uff11\uff12\uff13 \ufb01ne \ufb02ag",  # Full-width and ligatures (ftfy).
    "\u039f\u0394\u039f\u03a3 \u03a3\u039f\u03a6\u039f\u03a3 \u0130stanbul STRASSE Stra\u00dfe",
    "non\u00a0breaking\u2009thin\u200bzero-width soft\u00adhyphen",
    "pole.The sign reads \"NO PARKING.\" Overhead, wires... e.g. Mr. Smith's U.S.A. trip",
    "x" * 300,
    "",
    " ".join(LONG_SENTENCES),
    " ".join(LONG_SENTENCES * 3),  # Well over 248 tokens.
]


def openai_clean(text):
  """OpenAI `SimpleTokenizer` cleaning, written out independently of goal_jax."""
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return regex.sub(r"\s+", " ", text).strip().lower()


def hf_reference_tokenizer(gz_path=GZ_PATH):
  """HF CLIPTokenizer from the `.gz` (`vocab=`/`merges=` kwargs: transformers 5.x ignores
  `vocab_file=`)."""
  from transformers import CLIPTokenizer
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
               *range(ord("\u00ae"), ord("\u00ff") + 1)]
  byte_chars = [chr(b) for b in printable]
  byte_chars += [chr(256 + n) for n in range(256 - len(printable))]
  with gzip.open(gz_path, "rt", encoding="utf-8") as f:
    merges = [tuple(line.split()) for line in f.read().split("\n")[1:49152 - 256 - 2 + 1]]
  tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
  tokens += ["<|startoftext|>", "<|endoftext|>"]
  return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)


def reference_entry(hf, text):
  cleaned = openai_clean(text)
  entry = {"text": text, "ids": hf(cleaned, add_special_tokens=False)["input_ids"]}
  for length in CONTEXT_LENGTHS:
    entry[f"row_{length}"] = hf(cleaned, truncation=True, max_length=length)["input_ids"]
  return entry


def build_table():
  hf = hf_reference_tokenizer()
  return {"source": "transformers.CLIPTokenizer on OpenAI-cleaned, lowercased text",
          "cases": [reference_entry(hf, text) for text in CASES]}


def main():
  table = build_table()
  if "--check" in sys.argv:
    with open(TABLE_PATH, encoding="utf-8") as f:
      stale = json.load(f) != table
    print("stale" if stale else "up to date")
    sys.exit(int(stale))
  os.makedirs(os.path.dirname(TABLE_PATH), exist_ok=True)
  lines = ",\n".join(json.dumps(case) for case in table["cases"])  # One case per line.
  with open(TABLE_PATH, "w", encoding="utf-8") as f:
    f.write(f'{{"source": {json.dumps(table["source"])},\n"cases": [\n{lines}\n]}}\n')
  print(f"wrote {len(table['cases'])} cases to {TABLE_PATH}")


if __name__ == "__main__":
  main()
