"""Layers shared by the teacher and the student (torch only)."""

from d3r.nn.activations import confidence_activation, pointmap_activation, postprocess
from d3r.nn.attention import Attention
from d3r.nn.block import Block, LayerScale, Mlp
from d3r.nn.dpt import DPTHead, DPTPointmapHead
from d3r.nn.embeddings import image_index_embedding
from d3r.nn.patch_embed import PatchEmbed
from d3r.nn.rope import RoPE2D, patch_positions

__all__ = [
    "Attention",
    "Block",
    "DPTHead",
    "DPTPointmapHead",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "RoPE2D",
    "confidence_activation",
    "image_index_embedding",
    "patch_positions",
    "pointmap_activation",
    "postprocess",
]
