"""Tiny real models built at test time (no download): a CLIP for sentence-transformers, a YOLO.

Random weights give meaningless similarities: tests use them for plumbing and contracts;
ranking logic is tested with hand-made vectors.
"""

from __future__ import annotations

import json
from pathlib import Path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level BPE alphabet (256 printable stand-ins for the bytes)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_tiny_clip(directory: Path, projection_dim: int = 16, seed: int = 0, full_size: bool = False,
                    patch_size: int = 16, image_size: int = 64, vision_width: int = 32, text_width: int = 32,
                    layout: str = "transformers") -> Path:
    """A ~360 KB CLIP (hidden 32, 2 layers, 64 px images) loadable by SentenceTransformer(directory).

    `full_size=True` builds ViT-B/32 shapes instead (random weights, the real compute cost; ~600 MB).
    `patch_size`, `image_size`, `vision_width`, `text_width`: miniature versions of the other
    OpenAI shapes (ViT-B/16: a finer patch grid; ViT-L/14: patch 14, wider towers, a larger
    projection). `layout`: "transformers" = a plain CLIPModel checkpoint (config.json, weights,
    processor; no modules.json), as patrickjohncyh/fashion-clip is published; "sentence-transformers"
    = modules.json naming sentence_transformers.models.CLIPModel in 0_CLIPModel/, as the hub's
    sentence-transformers/clip-ViT-B-16 and clip-ViT-L-14 are published.
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    if layout not in ("transformers", "sentence-transformers"):
        raise ValueError(f"unknown layout {layout!r}")
    top = directory
    if layout == "sentence-transformers":
        directory = top / "0_CLIPModel"
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(_bytes_to_unicode().values())}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    tokens = dict(vocab_size=len(vocab), max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(seed)
    if full_size:
        config = CLIPConfig(text_config=tokens)  # ViT-B/32 defaults: 224 px, 12 layers, 512-d
        image_processor = CLIPImageProcessor()
    else:
        common = dict(intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
        config = CLIPConfig(text_config=dict(common, hidden_size=text_width, **tokens),
                            vision_config=dict(common, hidden_size=vision_width, image_size=image_size,
                                               patch_size=patch_size),
                            projection_dim=projection_dim)
        image_processor = CLIPImageProcessor(size=image_size, crop_size=image_size)
    model = CLIPModel(config)
    model.save_pretrained(directory)
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    processor.save_pretrained(directory)
    if layout == "sentence-transformers":
        (top / "modules.json").write_text(json.dumps(
            [{"idx": 0, "name": "0", "path": "0_CLIPModel", "type": "sentence_transformers.models.CLIPModel"}]))
    return top


# Miniatures of the published shapes (tiny widths; the patch grid and the projection change as in
# the real ones: B/32 -> B/16 keeps 512-d vectors, L/14 gives 768-d ones and a wider image tower).
TINY_B16 = dict(patch_size=8, image_size=64, projection_dim=16)
TINY_L14 = dict(patch_size=14, image_size=56, vision_width=48, text_width=32, projection_dim=24)


FOOTWEAR_NAMES = ["Footwear", "Boot", "High heels", "Sandal", "Roller skates"]


def build_tiny_yolo(path: Path) -> Path:
    """A random-init YOLOv8n whose classes are the Open Images footwear names, saved as .pt."""
    import yaml
    from ultralytics import YOLO
    from ultralytics.utils import ROOT

    cfg = yaml.safe_load((ROOT / "cfg" / "models" / "v8" / "yolov8.yaml").read_text())
    cfg["nc"] = len(FOOTWEAR_NAMES)
    cfg_path = path.with_name("tiny-shoes-yolov8n.yaml")
    cfg_path.write_text(yaml.safe_dump(cfg))
    model = YOLO(str(cfg_path))
    model.model.names = dict(enumerate(FOOTWEAR_NAMES))
    model.save(str(path))
    return path


def build_tiny_multilingual_text_model(directory: Path, dimension: int = 16, seed: int = 1) -> Path:
    """A tiny text encoder of the same structure as sentence-transformers' clip-ViT-B-32-multilingual-v1
    (DistilBERT, mean pooling, a dense layer without bias to the CLIP dimension), random weights,
    with a character-level WordPiece vocabulary that covers accented Latin, Greek and Cyrillic.
    Loadable by SentenceTransformer(directory)."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    bert_dir = directory / "bert"
    bert_dir.mkdir(exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyzàáâäçèéêëìíîïñòóôöùúûüßøåæ0123456789-'" \
              "αβγδεζηθικλμνξοπρστυφχψωабвгдежзийклмнопрстуфхцчшщъыьэюя"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters)]
    (bert_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = DistilBertTokenizer(str(bert_dir / "vocab.txt"), do_lower_case=True, strip_accents=False)
    torch.manual_seed(seed)
    config = DistilBertConfig(vocab_size=len(vocab), dim=32, n_layers=2, n_heads=2, hidden_dim=37,
                              max_position_embeddings=128)
    DistilBertModel(config).save_pretrained(bert_dir)
    tokenizer.save_pretrained(bert_dir)
    transformer = models.Transformer(str(bert_dir), max_seq_length=64)
    width = (getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension)()
    pooling = models.Pooling(width, "mean")
    dense = models.Dense(width, dimension, bias=False,
                         activation_function=torch.nn.Identity())
    SentenceTransformer(modules=[transformer, pooling, dense], device="cpu").save(str(directory))
    return directory
